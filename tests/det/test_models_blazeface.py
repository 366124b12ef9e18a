"""BlazeFace and BlazeNet: blocks, MediaPipe anchors, SSD matching/loss, contract, ONNX."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import box_iou

import e2ekit.det.models  # noqa: F401  (registers networks and backbones)
from e2ekit.core.errors import ConfigError
from e2ekit.det.backbones.blazenet import BlazeBlock
from e2ekit.det.models.blazeface import (
    BlazeFace,
    decode,
    encode,
    hard_negatives,
    ssd_anchor_scales,
)
from e2ekit.det.registry import BACKBONES, MODELS

FAMILY = sorted(n for n in MODELS.names() if MODELS.get(n).__module__ == BlazeFace.__module__)
TINY_SPECS = [{"type": n} for n in FAMILY if n.endswith("_tiny")] + [
    {"type": "blazeface_tiny", "cls_loss": "focal", "num_classes": 2}
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on shared CPUs two threads spin against each other (10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build(spec: dict) -> BlazeFace:
    torch.manual_seed(0)
    return MODELS.build(spec)


def targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 46.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def test_blaze_blocks() -> None:
    x = torch.randn(2, 24, 16, 16)
    assert BlazeBlock(24, 24)(x).shape == (2, 24, 16, 16)
    single = BlazeBlock(24, 48, stride=2)
    assert single(x).shape == (2, 48, 8, 8)
    double = BlazeBlock(24, 96, stride=2, mid_channels=24)
    assert double(x).shape == (2, 96, 8, 8)
    depthwise = [m for m in double.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [m.kernel_size for m in depthwise] == [(5, 5), (5, 5)]
    # residual: with the branch zeroed, the output is relu(maxpool(x)) padded with zeros
    for p in single.branch.parameters():
        torch.nn.init.zeros_(p)
    single.eval()
    y = single(x)
    torch.testing.assert_close(y[:, :24], torch.relu(torch.nn.functional.max_pool2d(x, 2)))
    assert (y[:, 24:] == 0).all()
    with pytest.raises(ValueError):
        BlazeBlock(48, 24)


def test_blazenet_front_model() -> None:
    net = BACKBONES.build({"type": "blazenet"}).eval()
    assert net.strides == [8, 16] and net.out_channels == [96, 96]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 16, 16), (1, 96, 8, 8)]
    kinds = ["double" if len(b.branch) > 4 else "single" for b in net.blocks]
    assert kinds == ["single"] * 5 + ["double"] * 6


def test_mediapipe_anchor_layout() -> None:
    scales = ssd_anchor_scales()
    assert sorted(scales) == [8, 16]
    assert len(scales[8]) == 2 and len(scales[16]) == 6
    np.testing.assert_allclose(
        np.array(scales[8] + scales[16]) * 128,
        [19.0, 29.13, 44.67, 56.05, 70.33, 82.17, 96.0, 110.85],
        atol=0.01,
    )
    net = build({"type": "blazeface"}).eval()
    x = torch.zeros(1, 3, 128, 128)
    anchors = net.anchors(x, net.backbone(x))
    assert anchors.shape == (896, 4)  # 16*16*2 + 8*8*6
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres[0], torch.tensor([4.0, 4.0]))  # cell (0, 0) of 16x16
    torch.testing.assert_close(centres[2], torch.tensor([12.0, 4.0]))  # (row 0, column 1)
    torch.testing.assert_close(centres[512], torch.tensor([8.0, 8.0]))  # first 8x8 cell
    torch.testing.assert_close(centres[512:518], centres[512:513].expand(6, 2))
    widths = anchors[:, 2] - anchors[:, 0]
    torch.testing.assert_close(widths[512:518], torch.tensor(scales[16]) * 128)


def test_encode_decode_round_trip() -> None:
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 40.0, 90.0, 80.0]])
    gt = torch.tensor([[2.0, -3.0, 25.0, 18.0], [30.0, 40.0, 90.0, 80.0]])
    offsets = encode(gt, anchors)
    assert (offsets[1] == 0).all()
    torch.testing.assert_close(decode(offsets, anchors), gt)


def test_matching_and_hard_negatives() -> None:
    net = build({"type": "blazeface"})
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.5], [48.0, 48.0, 70.0, 70.0]])
    # anchors 0 and 1 overlap GT 0 by > 0.5; GT 1 claims its best anchor (IoU 0.2 < 0.5)
    assert net.match(anchors, gt).tolist() == [0, 0, 1]
    assert net.match(anchors, gt[:0]).tolist() == [-1, -1, -1]
    loss = torch.tensor([[0.1, 5.0, 0.3, 4.0, 0.2, 3.0, 9.0], [1.0, 2.0, 3.0, 0, 0, 0, 0]])
    pos = torch.tensor([[False, False, False, False, False, False, True], [False] * 7])
    mask = hard_negatives(loss, pos, 3.0)
    assert mask[0].nonzero().flatten().tolist() == [1, 3, 5]  # 3 per positive, hardest first
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 2]  # no positive: still 3


@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.get("cls_loss", "ce"))
def test_train_losses_backprop(spec: dict) -> None:
    net = build(spec).train()
    losses = net(torch.randn(2, 3, 64, 64), targets())
    assert set(losses) == {"loss_box", "loss_cls"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(h.weight.grad.abs().sum() for h in net.box_heads) > 0
    with pytest.raises(ValueError, match="labels must lie"):
        net(
            torch.randn(1, 3, 64, 64),
            [{"boxes": torch.ones(1, 4).cumsum(1), "labels": torch.tensor([5])}],
        )


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.get("cls_loss", "ce"))
def test_eval_format_and_raw(spec: dict, weighted: bool) -> None:
    net = build({**spec, "weighted_nms": weighted, "max_detections": 20}).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        boxes, scores = net.forward_raw(x)
        dets = net(x)
    n = 8 * 12 * 2 + 4 * 6 * 6
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, net.num_classes)
    assert (boxes >= 0).all() and (boxes[..., 0::2] <= 96).all() and (boxes[..., 1::2] <= 64).all()
    assert len(dets) == 2
    for det, ref in zip(dets, net.postprocess(boxes, scores), strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        m = len(det["scores"])
        assert 0 < m <= 20 and det["boxes"].shape == (m, 4) and det["labels"].dtype == torch.int64
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        torch.testing.assert_close(det["boxes"], ref["boxes"])
    assert net.weighted_nms is weighted and net.nms_thresh == 0.3


def test_full_model_shapes_and_size() -> None:
    assert FAMILY == ["blazeface", "blazeface_tiny"]
    net = build({"type": "blazeface"}).eval()
    assert net.num_classes == 1 and net.strides == (8, 16)
    assert 90_000 < sum(p.numel() for p in net.parameters()) < 110_000  # paper: ~0.1M
    with torch.no_grad():
        boxes, scores = net.forward_raw(torch.randn(1, 3, 128, 128))
    assert boxes.shape == (1, 896, 4) and scores.shape == (1, 896, 1)
    with pytest.raises(ConfigError, match="cls_loss"):
        build({"type": "blazeface", "cls_loss": "hinge"})


@pytest.mark.parametrize("spec", TINY_SPECS, ids=lambda s: s.get("cls_loss", "ce"))
def test_onnx_export_raw_parity(spec: dict) -> None:
    net = build(spec).eval()

    class Raw(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net.forward_raw(x)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Raw().eval(),
            (torch.randn(1, 3, 64, 64),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["boxes", "scores"],
            dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "boxes": {0: "b", 1: "n"}},
        )
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    torch.manual_seed(2)
    for shape in [(1, 3, 64, 64), (2, 3, 128, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref_boxes, ref_scores = net.forward_raw(x)
        got_boxes, got_scores = session.run(None, {"image": x.numpy()})
        assert got_boxes.shape == tuple(ref_boxes.shape)
        np.testing.assert_allclose(got_boxes, ref_boxes.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_scores, ref_scores.numpy(), atol=1e-4, rtol=0)


def test_tiny_blazeface_overfits_one_face() -> None:
    torch.manual_seed(0)
    img = torch.randn(1, 3, 64, 64) * 0.3
    img[0, :, 14:42, 20:44] = torch.tensor([1.2, 0.4, -0.8]).view(3, 1, 1)
    box = torch.tensor([[20.0, 14.0, 44.0, 42.0]])
    net = build({"type": "blazeface_tiny"}).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = sum(net(img, [{"boxes": box, "labels": torch.tensor([0])}]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first / 4
    with torch.no_grad():
        det = net.eval()(img)[0]
    assert det["scores"][0] > 0.5
    assert box_iou(box, det["boxes"][:1]).item() > 0.5
