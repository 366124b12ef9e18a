"""Seg backbones and networks: shapes, gradients, ONNX parity, channels_last, weight loading."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

import e2ekit.seg.models  # noqa: F401  (registers networks and backbones)
from e2ekit.core.errors import ConfigError
from e2ekit.seg.backbones import load_pretrained
from e2ekit.seg.models.layers import ASPP, adaptive_avg_pool2d
from e2ekit.seg.registry import BACKBONES, MODELS

K = 3
TINY = [n for n in MODELS.names() if n.endswith("_tiny")]  # seg's registry holds only seg's
SEG_BACKBONES = BACKBONES.names()
TINY_BACKBONES = [n for n in SEG_BACKBONES if n.endswith("_tiny")]
# Outputs in training mode: main head + auxiliary heads.
TRAIN_OUTPUTS = {
    "unet_tiny": 1,
    "deeplabv3p_tiny": 1,
    "pspnet_tiny": 2,
    "icnet_tiny": 3,
    "pp_liteseg_tiny": 3,
}
EXPECTED_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "resnet101": [256, 512, 1024, 2048],
    "mobilenet_v2": [24, 32, 96, 320],
    "mobilenet_v3_large": [24, 40, 112, 960],
    "mobilenet_v3_small": [16, 24, 48, 576],
}


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.build({"type": name, **kw}, K)


class FirstOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def test_all_families_have_tiny_variants() -> None:
    assert set(TRAIN_OUTPUTS) <= set(TINY)
    assert {"unet", "deeplabv3p", "pspnet", "icnet", "pp_liteseg"} <= set(MODELS.names())


@pytest.mark.parametrize("name", TINY)
def test_train_forward_backward(name: str) -> None:
    net = build(name).train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, K, (2, 64, 64))
    outs = net(x)
    assert isinstance(outs, list)
    assert len(outs) == TRAIN_OUTPUTS.get(name, len(outs)) >= 1
    for out in outs:
        assert out.shape == (2, K, 64, 64)
    loss = sum(F.cross_entropy(o, label) for o in outs)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero grad for {pname}"


@pytest.mark.parametrize("name", TINY)
def test_eval_single_output_any_size(name: str) -> None:
    net = build(name).eval()
    with torch.no_grad():
        for shape in [(1, 3, 64, 96), (2, 3, 50, 70)]:
            outs = net(torch.randn(*shape))
            assert len(outs) == 1
            assert outs[0].shape == (shape[0], K, *shape[2:])
            assert torch.isfinite(outs[0]).all()
            assert outs[0].std() > 0  # not a constant map


@pytest.mark.parametrize("name", TINY)
def test_onnx_dynamic_export_parity(name: str) -> None:
    net = build(name).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            FirstOutput(net).eval(),
            (torch.randn(1, 3, 64, 64),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "h", 3: "w"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    torch.manual_seed(2)
    for shape in [(2, 3, 96, 64), (1, 3, 50, 70)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x)[0].numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_channels_last_matches_contiguous(name: str) -> None:
    net = build(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)[0]
        net = net.to(memory_format=torch.channels_last)
        got = net(x.to(memory_format=torch.channels_last))[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_unet_deconv_and_backbone_rejected() -> None:
    net = build("unet_tiny", use_deconv=True).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 50, 70))[0].shape == (1, K, 50, 70)
    with pytest.raises(ConfigError, match="own encoder"):
        build("unet_tiny", backbone={"type": "resnet_tiny"})


def test_backbone_spec_merging_and_aspp_rates() -> None:
    def rates(net: nn.Module) -> list[int]:
        aspp = next(m for m in net.modules() if isinstance(m, ASPP))
        return [
            next(c for c in b.modules() if isinstance(c, nn.Conv2d)).dilation[0]
            for b in aspp.branches
        ]

    default = build("deeplabv3p_tiny")
    assert default.backbone.output_stride == 8
    assert rates(default) == [1, 12, 24, 36]  # (1, 6, 12, 18) given at stride 16, doubled
    os16 = build("deeplabv3p_tiny", backbone={"output_stride": 16})  # no type: overrides
    assert type(os16.backbone) is type(default.backbone) and os16.backbone.output_stride == 16
    assert rates(os16) == [1, 6, 12, 18]
    other = build("deeplabv3p_tiny", backbone={"type": "mobilenet_tiny"})  # inherits os 8
    assert other.backbone.output_stride == 8
    with torch.no_grad():
        assert other.eval()(torch.randn(1, 3, 64, 64))[0].shape == (1, K, 64, 64)


@pytest.mark.parametrize("size", [(64, 64), (7, 13), (17, 9), (6, 6)])
@pytest.mark.parametrize("bins", [1, 2, 3, 4, 6])
def test_adaptive_avg_pool_matches_torch(size: tuple[int, int], bins: int) -> None:
    x = torch.randn(2, 4, *size) * 5 + 3
    torch.testing.assert_close(
        adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins), atol=1e-5, rtol=1e-5
    )


# ---- backbones ------------------------------------------------------------------------


def _check_features(name: str, output_stride: int, strides: list[int]) -> None:
    torch.manual_seed(0)
    net = BACKBONES.build({"type": name, "output_stride": output_stride}).eval()
    assert net.strides == strides
    assert len(net.out_channels) == 4
    if name in EXPECTED_CHANNELS:
        assert net.out_channels == EXPECTED_CHANNELS[name]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert len(feats) == 4
    for f, c, s in zip(feats, net.out_channels, strides, strict=True):
        assert f.shape == (1, c, 64 // s, 64 // s)
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("name", SEG_BACKBONES)
def test_backbone_features(name: str) -> None:
    _check_features(name, 32, [4, 8, 16, 32])


@pytest.mark.parametrize(
    ("name", "output_stride", "strides"),
    [(n, 16, [4, 8, 16, 16]) for n in TINY_BACKBONES]
    + [(n, 8, [4, 8, 8, 8]) for n in TINY_BACKBONES]
    + [("resnet50", 8, [4, 8, 8, 8]), ("mobilenet_v3_small", 8, [4, 8, 8, 8])],
)
def test_backbone_dilated(name: str, output_stride: int, strides: list[int]) -> None:
    _check_features(name, output_stride, strides)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_dilation_matches_torchvision(output_stride: int) -> None:
    ours = BACKBONES.build({"type": "resnet50", "output_stride": output_stride})
    flags = [False, output_stride == 8, True]
    ref = tvm.resnet50(weights=None, replace_stride_with_dilation=flags)
    mods = dict(ours.named_modules())
    compared = 0
    for key, m in ref.named_modules():
        if isinstance(m, nn.Conv2d):
            got = mods[key]
            assert (got.stride, got.dilation, got.padding) == (m.stride, m.dilation, m.padding), key
            compared += 1
    assert compared == 53


def test_bad_output_stride() -> None:
    with pytest.raises(ConfigError, match="output_stride"):
        BACKBONES.build({"type": "resnet_tiny", "output_stride": 4})


def _randomize_bn_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_torchvision_state_dict_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    ref = getattr(tvm, name)(weights=None).eval()
    _randomize_bn_stats(ref)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)

    fresh = BACKBONES.build({"type": name})
    missing, unexpected = load_pretrained(fresh, path)
    assert missing == []
    head = "fc." if name.startswith("resnet") else "classifier."
    assert unexpected and all(k.startswith(head) for k in unexpected)

    net = BACKBONES.build({"type": name, "pretrained": str(path)}).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if name.startswith("resnet"):
            y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
            expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(y))))
        else:
            expected = ref.features(x)
        got = net(x)[3]
        unloaded = BACKBONES.build({"type": name}).eval()(x)[3]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unloaded, expected, atol=1e-3)

    # Wrapped checkpoints ({"state_dict": ...} with a DDP 'module.' prefix) load the same.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, wrapped)
    net2 = BACKBONES.build({"type": name, "pretrained": str(wrapped)}).eval()
    with torch.no_grad():
        torch.testing.assert_close(net2(x)[3], expected, atol=1e-5, rtol=1e-5)


def test_missing_pretrained_file(tmp_path) -> None:
    path = tmp_path / "no_such_weights.pth"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        BACKBONES.build({"type": "resnet_tiny", "pretrained": str(path)})
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        BACKBONES.build({"type": "mobilenet_tiny", "pretrained": str(bad)})


# ---- full-size smoke ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "backbone"),
    [("deeplabv3p", {"type": "resnet50", "output_stride": 8}), ("pspnet", None)],
)
def test_full_size_networks(name: str, backbone: dict | None) -> None:
    torch.manual_seed(0)
    net = MODELS.build({"type": name, "backbone": backbone}, 19).eval()
    assert net.backbone.output_stride == 8
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 128, 128))
    assert len(outs) == 1 and outs[0].shape == (1, 19, 128, 128)
    assert torch.isfinite(outs[0]).all() and outs[0].std() > 0


def _main_head_input_size(net: nn.Module, outputs: int) -> tuple[int, int]:
    """Train-mode forward/backward on 64x64 inputs: every output at input size, a gradient for
    every parameter; returns the spatial size the main head saw."""
    seen: list[tuple[int, int]] = []
    net.heads[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
    x, label = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    outs = net(x)
    assert len(outs) == outputs and all(o.shape == (2, K, 64, 64) for o in outs)
    sum(F.cross_entropy(o, label) for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())
    return seen[0]


def test_pp_liteseg_stride4_decoder() -> None:
    """Four decoder channel counts add a stride-4 fusion: the main head sees 1/4 resolution."""
    spec = {"backbone": {"type": "resnet_tiny"}, "head_channels": 8}
    three = build("pp_liteseg", decoder_channels=[8, 12, 16], **spec)
    four = build("pp_liteseg", decoder_channels=[6, 8, 12, 16], **spec).train()
    assert _main_head_input_size(four, outputs=4) == (16, 16)
    assert len(three.fusions) == 3 and len(four.fusions) == 4
    four.eval()
    with torch.no_grad():
        assert [o.shape for o in four(torch.randn(1, 3, 50, 70))] == [(1, K, 50, 70)]
    with pytest.raises(ConfigError, match=r"model\.decoder_channels"):
        build("pp_liteseg", decoder_channels=[8, 16], **spec)


def _onnx_dynamic(net: nn.Module, example: torch.Tensor) -> ort.InferenceSession:
    """The main output exported with dynamic batch and size, in an onnxruntime session."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            FirstOutput(net),
            (example,),
            buf,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
            dynamo=False,
        )
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])


def test_pp_liteseg_detail_branch() -> None:
    """detail_channels adds a stride-2 branch fused into a new main head; the old main head
    turns auxiliary, and the network still exports with dynamic sizes."""
    spec = {"backbone": {"type": "resnet_tiny"}, "decoder_channels": [8, 12, 16]}
    net = build("pp_liteseg", detail_channels=6, head_channels=8, **spec).train()
    assert _main_head_input_size(net, outputs=4) == (32, 32)
    net.eval()
    odd = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        (main,) = net(odd)
    assert main.shape == (1, K, 50, 70)
    (got,) = _onnx_dynamic(net, torch.randn(1, 3, 64, 64)).run(None, {"x": odd.numpy()})
    np.testing.assert_allclose(got, main.numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"model\.detail_channels"):
        build("pp_liteseg", detail_channels=-1, **spec)


def test_pp_liteseg_image_norm_ignores_lighting() -> None:
    """image_norm standardises each image per channel inside the network: a global gain,
    offset and colour cast (another light) leave the prediction unchanged, and the
    standardisation exports with the graph."""
    spec = {"backbone": {"type": "resnet_tiny"}, "decoder_channels": [8, 12, 16]}
    torch.manual_seed(0)
    net = build("pp_liteseg", image_norm=True, detail_channels=4, head_channels=8, **spec)
    net.eval()
    x = torch.rand(2, 3, 48, 64) * 2 - 1  # Normalize's -1..1 units
    cast = torch.tensor([1.3, 0.9, 0.6]).view(1, 3, 1, 1)
    plain = build("pp_liteseg", detail_channels=4, head_channels=8, **spec).eval()
    with torch.no_grad():
        (day,) = net(x)
        (dusk,) = net(x * 0.4 * cast - 0.2)
        plain_day = plain(x)[0]
        plain_shift = (plain(x * 0.4 * cast - 0.2)[0] - plain_day).abs().max()
    torch.testing.assert_close(dusk, day, atol=1e-3, rtol=1e-3)
    # without image_norm the same light moves the logits hundreds of times further
    assert plain_shift > 100 * (dusk - day).abs().max()
    with pytest.raises(ConfigError, match=r"model\.image_norm"):
        build("pp_liteseg", image_norm="yes", **spec)
    (got,) = _onnx_dynamic(net, x).run(None, {"x": (x * 0.4 * cast - 0.2).numpy()})
    np.testing.assert_allclose(got, day.numpy(), atol=1e-3, rtol=1e-3)
