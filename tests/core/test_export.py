"""Tests for e2ekit.core.export (ONNX export, parity, int8) and e2ekit.core.infer (Predictor)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

import e2ekit.core.export.parity as parity_mod
from e2ekit.core.export import ExportError, export_onnx, quantize_int8
from e2ekit.core.infer import ExportFolderError, Predictor, load_sample_inputs

ATOL = 1e-4


class MLP(nn.Module):
    """Big enough Linear layers that int8 weights visibly shrink the file."""

    def __init__(self, in_dim: int = 64, hidden: int = 384, out_dim: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """Dense-prediction net returning a dict whose key order differs from output_names."""

    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(channels, classes, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(image)
        return {"pooled": feats.mean(dim=(2, 3)), "logits": self.head(feats)}


class CheatsInOnnx(nn.Module):
    """Deliberately exports a different function than it runs eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if torch.onnx.is_in_onnx_export():
            return y + 1.0
        return y


class SegNet(nn.Module):
    """Segmentation head returning softmax probs (B,K,H,W); ``scale`` separates the classes."""

    def __init__(self, channels: int = 8, classes: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(channels, classes, 1)
        self.scale = scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(image)) * self.scale, dim=1)


def build_seg(**config: float) -> SegNet:
    return SegNet(**config)


def build_mlp(**config: int) -> MLP:
    return MLP(**config)


def build_conv(**config: int) -> ConvNet:
    return ConvNet(**config)


MLP_CONFIG = {"in_dim": 64, "hidden": 384, "out_dim": 8}


def _export_mlp(out_dir: Path, seed: int = 0) -> tuple[MLP, dict]:
    torch.manual_seed(seed)
    model = MLP(**MLP_CONFIG)
    report = export_onnx(
        model,
        {"x": torch.randn(4, 64)},
        out_dir,
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        deploy={"kit": "toy", "class_names": [f"c{i}" for i in range(8)]},
        parity_inputs=[{"x": torch.randn(7, 64)}, {"x": torch.randn(1, 64)}],
        torch_builder=f"{__name__}:build_mlp",
        builder_config=MLP_CONFIG,
    )
    return model, report


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[MLP, dict, Path]:
    out = tmp_path_factory.mktemp("mlp") / "export"
    model, report = _export_mlp(out)
    return model, report, out


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ConvNet, dict, Path]:
    torch.manual_seed(1)
    model = ConvNet()
    with torch.no_grad():  # non-trivial BN statistics so eval-mode export matters
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    model.train()  # export must switch to eval itself and restore the flag afterwards
    out = tmp_path_factory.mktemp("conv") / "export"
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    report = export_onnx(
        model,
        {"image": torch.randn(2, 3, 32, 32)},
        out,
        output_names=["logits", "pooled"],
        dynamic_axes={
            **axes,
            "logits": {0: "batch", 2: "height", 3: "width"},
            "pooled": {0: "batch"},
        },
        deploy={"kit": "seg", "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}},
        parity_inputs=[{"image": torch.randn(3, 3, 24, 40)}],
        torch_builder=f"{__name__}:build_conv",
        builder_config={"channels": 8, "classes": 3},
    )
    assert model.training
    return model.eval(), report, out


def test_export_writes_all_artifacts_and_parity(mlp_export: tuple[MLP, dict, Path]) -> None:
    model, report, out = mlp_export
    for name in (
        "model.onnx",
        "deploy.yaml",
        "export_report.json",
        "weights.pt",
        "sample_inputs.npz",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp folder left"

    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk == report
    onnx_rep = report["onnx"]
    assert onnx_rep["passed"] is True
    assert 0.0 <= onnx_rep["max_abs_diff"] < ATOL
    assert onnx_rep["cases"] == 3
    assert [s[0] for s in onnx_rep["per_output"]["y"]["shapes"]] == [4, 7, 1]
    assert report["model_bytes"] == (out / "model.onnx").stat().st_size
    assert report["opset"] == 17 and report["torch_version"] == torch.__version__
    assert report["torch_rebuild"]["passed"] is True

    deploy = yaml.safe_load((out / "deploy.yaml").read_text())
    assert deploy["kit"] == "toy" and deploy["class_names"][0] == "c0"
    assert deploy["format_version"] == 1 and deploy["model_file"] == "model.onnx"
    assert deploy["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    assert deploy["outputs"][0]["name"] == "y" and deploy["outputs"][0]["shape"][0] == "batch"
    assert deploy["torch"] == {"builder": f"{__name__}:build_mlp", "config": MLP_CONFIG}

    state = torch.load(out / "weights.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    samples = load_sample_inputs(out)
    assert [c["x"].shape for c in samples] == [(4, 64), (7, 64), (1, 64)]


def test_conv_export_dynamic_spatial_and_dict_outputs(conv_export) -> None:
    _, report, out = conv_export
    rep = report["onnx"]
    assert rep["passed"] and rep["max_abs_diff"] < ATOL and rep["cases"] == 2
    assert rep["per_output"]["logits"]["shapes"] == [[2, 3, 32, 32], [3, 3, 24, 40]]
    assert rep["per_output"]["pooled"]["shapes"] == [[2, 8], [3, 8]]
    deploy = yaml.safe_load((out / "deploy.yaml").read_text())
    assert deploy["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert [o["name"] for o in deploy["outputs"]] == ["logits", "pooled"]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_predictor_matches_eager_on_new_shapes(conv_export, backend: str) -> None:
    model, _, out = conv_export
    pred = Predictor(out, backend=backend)
    assert pred.input_names == ["image"] and pred.output_names == ["logits", "pooled"]
    assert pred.deploy["preprocess"]["std"] == [0.2, 0.2, 0.2]
    image = np.random.default_rng(5).standard_normal((5, 3, 20, 28))  # float64 on purpose
    got = pred({"image": image})
    with torch.inference_mode():
        ref = model(torch.from_numpy(image.astype(np.float32)))
    for name in ("logits", "pooled"):
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], ref[name].numpy(), atol=ATOL, rtol=0)


def test_predictor_mlp_backends_agree_and_threads(mlp_export) -> None:
    model, _, out = mlp_export
    x = np.random.default_rng(3).standard_normal((9, 64)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    pred = Predictor(out, num_threads=1)
    opts = pred.backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert (
        Predictor(out, num_threads=2).backend.session.get_session_options().intra_op_num_threads
        == 2
    )
    np.testing.assert_allclose(pred.run({"x": x})["y"], ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(
        Predictor(out, backend="torch")({"x": x})["y"], ref, atol=ATOL, rtol=0
    )


def test_quantize_int8(tmp_path: Path) -> None:
    out = tmp_path / "export"
    model, _ = _export_mlp(out)
    section = quantize_int8(out)
    assert (out / "model.int8.onnx").is_file()
    assert math.isfinite(section["max_abs_diff"]) and section["max_abs_diff"] > 0
    assert 0 < section["mean_abs_diff"] <= section["max_abs_diff"]
    assert section["size_ratio"] < 0.5  # int8 weights: roughly a quarter of fp32
    assert section["model_bytes"] == (out / "model.int8.onnx").stat().st_size
    report = json.loads((out / "export_report.json").read_text())
    assert report["int8"] == section and report["onnx"]["passed"]
    assert yaml.safe_load((out / "deploy.yaml").read_text())["int8_model_file"] == "model.int8.onnx"

    x = np.random.default_rng(4).standard_normal((6, 64)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    q = Predictor(out, precision="int8")({"x": x})["y"]
    f = Predictor(out)({"x": x})["y"]
    assert not np.allclose(q, f, atol=1e-7)  # genuinely a different model...
    assert np.abs(q - ref).max() < 0.05 * np.abs(ref).max()  # ...but still the same function

    # a tolerance the int8 model cannot meet: nothing published, old int8 entry withdrawn
    with pytest.raises(ExportError, match="atol"):
        quantize_int8(out, atol=1e-9)
    assert not (out / "model.int8.onnx").exists()
    assert "int8_model_file" not in yaml.safe_load((out / "deploy.yaml").read_text())
    assert json.loads((out / "export_report.json").read_text())["int8"]["passed"] is False
    with pytest.raises(ExportFolderError, match="quantize_int8"):
        Predictor(out, precision="int8")


def test_reexport_removes_stale_int8(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_mlp(out)
    quantize_int8(out)
    _export_mlp(out, seed=1)
    assert not (out / "model.int8.onnx").exists()
    assert "int8_model_file" not in yaml.safe_load((out / "deploy.yaml").read_text())


def _export_cheat(out: Path) -> None:
    torch.manual_seed(0)
    export_onnx(
        CheatsInOnnx(),
        {"x": torch.randn(3, 4)},
        out,
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        deploy={"kit": "toy"},
    )


def test_parity_failure_raises_and_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "export"
    with pytest.raises(ExportError, match=r"output 'y' max_abs_diff=1\.0") as info:
        _export_cheat(out)
    assert not (out / "model.onnx").exists()
    failed = info.value.artifacts_dir
    assert failed is not None and str(failed) in str(info.value)
    report = json.loads((failed / "export_report.json").read_text())
    assert report["onnx"]["passed"] is False
    assert report["onnx"]["max_abs_diff"] == pytest.approx(1.0, abs=1e-5)
    assert info.value.report["onnx"]["passed"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left"

    # a failed re-export must not damage a previous good export in the same folder
    _export_mlp(out)
    before = (out / "model.onnx").read_bytes()
    with pytest.raises(ExportError):
        _export_cheat(out)
    assert (out / "model.onnx").read_bytes() == before
    assert json.loads((out / "export_report.json").read_text())["onnx"]["passed"] is True


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    kwargs = {"output_names": ["y"], "deploy": {}}
    with pytest.raises(ValueError, match="neither inputs nor outputs"):
        export_onnx(
            MLP(), {"x": torch.randn(2, 64)}, tmp_path / "a", dynamic_axes={"z": {0: "b"}}, **kwargs
        )
    with pytest.raises(ValueError, match="owned by export_onnx"):
        export_onnx(
            MLP(),
            {"x": torch.randn(2, 64)},
            tmp_path / "a",
            dynamic_axes={},
            output_names=["y"],
            deploy={"inputs": []},
        )
    assert not (tmp_path / "a").exists()


def test_predictor_errors(mlp_export, tmp_path: Path) -> None:
    _, _, out = mlp_export
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Predictor(missing)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.onnx") as info:
        Predictor(broken)
    assert str(broken) in str(info.value)
    (broken / "deploy.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"deploy\.yaml"):
        Predictor(broken)

    with pytest.raises(ValueError, match=r"'tensorrt'.*\['onnxruntime', 'torch'\]"):
        Predictor(out, backend="tensorrt")
    pred = Predictor(out)
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(KeyError, match=r"missing model input\(s\) \['x'\]"):
        pred.run({"input": x})
    with pytest.raises(KeyError, match=r"unknown model input\(s\) \['extra'\]"):
        pred.run({"x": x, "extra": x})
    with pytest.raises(ValueError, match="axis 1"):
        pred.run({"x": np.zeros((2, 63), np.float32)})
    with pytest.raises(TypeError, match="cannot be safely cast"):
        pred.run({"x": np.zeros((2, 64), np.complex64)})


# --------------------------------------------------------------------------- argmax outputs

SEG_CONFIG = {"channels": 8, "classes": 4, "scale": 50.0}


def _export_seg(out: Path, **kwargs) -> tuple[SegNet, dict]:
    torch.manual_seed(2)
    model = SegNet(**SEG_CONFIG)
    report = export_onnx(
        model,
        {"image": torch.randn(2, 3, 32, 32)},
        out,
        output_names=["probs"],
        dynamic_axes={
            "image": {0: "batch", 2: "height", 3: "width"},
            "probs": {0: "batch", 2: "height", 3: "width"},
            "label_map": {0: "batch", 1: "height", 2: "width"},
        },
        deploy={"kit": "seg"},
        parity_inputs=[{"image": torch.randn(3, 3, 24, 40)}],
        torch_builder=f"{__name__}:build_seg",
        builder_config=SEG_CONFIG,
        argmax={"probs": "label_map"},
        **kwargs,
    )
    return model.eval(), report


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegNet, dict, Path]:
    out = tmp_path_factory.mktemp("seg") / "export"
    model, report = _export_seg(out)
    return model, report, out


def test_argmax_export_contract_and_report(seg_export) -> None:
    _, report, out = seg_export
    rep = report["onnx"]
    assert rep["passed"] and rep["max_abs_diff"] < ATOL
    assert rep["per_output"]["probs"]["shapes"] == [[2, 4, 32, 32], [3, 4, 24, 40]]
    assert report["argmax"] == {
        "label_map": {
            "from": "probs",
            "axis": 1,
            "mismatch_fraction": 0.0,
            "elements": 2 * 32 * 32 + 3 * 24 * 40,
            "max_abs_diff_before_argmax": rep["per_output"]["probs"]["max_abs_diff"],
        }
    }
    assert json.loads((out / "export_report.json").read_text()) == report

    deploy = yaml.safe_load((out / "deploy.yaml").read_text())
    assert deploy["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}
    ]
    assert deploy["outputs"] == [
        {"name": "label_map", "dtype": "int64", "shape": ["batch", "height", "width"]}
    ]
    assert deploy["torch"] == {
        "builder": f"{__name__}:build_seg",
        "config": SEG_CONFIG,
        "module_outputs": ["probs"],
        "argmax": {"probs": "label_map"},
        "argmax_axis": 1,
    }
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["label_map"]
    last = graph.node[-1]
    assert last.op_type == "ArgMax" and list(last.input) == ["probs"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in last.attribute}
    assert attrs == {"axis": 1, "keepdims": 0}


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_argmax_predictor_backends(seg_export, backend: str) -> None:
    model, _, out = seg_export
    pred = Predictor(out, backend=backend)
    assert pred.output_names == ["label_map"]
    image = np.random.default_rng(6).standard_normal((2, 3, 20, 28)).astype(np.float32)
    got = pred({"image": image})
    with torch.inference_mode():
        ref = model(torch.from_numpy(image)).argmax(dim=1).numpy()
    assert list(got) == ["label_map"]
    assert got["label_map"].dtype == np.int64 and got["label_map"].shape == (2, 20, 28)
    np.testing.assert_array_equal(got["label_map"], ref)


def test_argmax_quantize_int8(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_seg(out)
    section = quantize_int8(out)
    assert (out / "model.int8.onnx").is_file()
    assert section["max_abs_diff"] is None and section["mean_abs_diff"] is None
    frac = section["per_output"]["label_map"]["mismatch_fraction"]
    assert math.isfinite(frac) and 0.0 <= frac <= 1.0
    assert set(section["per_output"]["label_map"]) == {"mismatch_fraction"}
    assert section["passed"] and section["size_ratio"] > 0
    assert yaml.safe_load((out / "deploy.yaml").read_text())["int8_model_file"] == "model.int8.onnx"
    got = Predictor(out, precision="int8")({"image": np.zeros((1, 3, 16, 16), np.float32)})
    assert got["label_map"].dtype == np.int64 and got["label_map"].shape == (1, 16, 16)

    quantize_int8(out, atol=1.0)  # mismatch_fraction <= 1 always holds
    with pytest.raises(ExportError, match="mismatch_fraction"):
        quantize_int8(out, atol=-1.0)
    assert not (out / "model.int8.onnx").exists()


def test_argmax_mismatch_fails_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parity_mod, "ARGMAX_MISMATCH_TOL", -1.0)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match=r"'label_map' mismatch_fraction=0\.0") as info:
        _export_seg(out)
    assert not out.exists()
    failed = info.value.artifacts_dir
    assert failed is not None and (failed / "model.onnx").is_file()
    report = json.loads((failed / "export_report.json").read_text())
    assert report["onnx"]["passed"] and report["argmax"]["label_map"]["mismatch_fraction"] == 0


def test_argmax_rejects_bad_arguments(tmp_path: Path) -> None:
    def export(**kwargs) -> None:
        base = {
            "output_names": ["probs"],
            "dynamic_axes": {"label_map": {0: "batch"}},
            "deploy": {},
        }
        export_onnx(SegNet(), {"image": torch.randn(1, 3, 8, 8)}, tmp_path / "a", **base, **kwargs)

    with pytest.raises(ValueError, match="not in output_names"):
        export(argmax={"logits": "label_map"})
    with pytest.raises(ValueError, match="already input/output names"):
        export(argmax={"probs": "image"})
    with pytest.raises(ValueError, match="already input/output names"):
        export(argmax={"probs": "probs"})
    with pytest.raises(ValueError, match="neither inputs nor outputs"):
        export()  # dynamic_axes names label_map, which only an argmax output may define
    with pytest.raises(ValueError, match="out of range"):
        export(argmax={"probs": "label_map"}, argmax_axis=4)
    assert list(tmp_path.iterdir()) == []
