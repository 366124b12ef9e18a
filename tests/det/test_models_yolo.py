"""YOLOv3 and its backbones: the detector contract, target assignment, loss, ONNX, overfitting."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.models as tvm
from torchvision.ops import box_iou

import e2ekit.det.models  # noqa: F401  (registers networks and backbones)
from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Detector, multiclass_nms, weighted_nms
from e2ekit.det.models.yolov3 import COCO_ANCHORS, YOLOv3, assign_targets
from e2ekit.det.registry import BACKBONES, MODELS

K = 3
FAMILY = sorted(n for n in MODELS.names() if MODELS.get(n).__module__ == YOLOv3.__module__)
YOLO_TINY = [n for n in FAMILY if n.endswith("_tiny")]
YOLO_FULL = [n for n in FAMILY if not n.endswith("_tiny")]
# Tiny variants exercised in full: the registered ones plus the MobileNet path of the family.
YOLO_TINY_SPECS = [{"type": n} for n in YOLO_TINY] + [
    {"type": "yolov3_tiny", "backbone": {"type": "mobilenet_v3_tiny"}}
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on shared CPUs two threads spin against each other (10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build(spec: dict, num_classes: int = K) -> YOLOv3:
    torch.manual_seed(0)
    return MODELS.build(spec, num_classes)


def targets(batch: int = 2) -> list[dict[str, torch.Tensor]]:
    out = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 34.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return out[:batch]


def num_anchors(h: int, w: int) -> int:
    return sum(3 * math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32))


def test_registry_names() -> None:
    assert FAMILY == ["yolov3_darknet53", "yolov3_mobilenet_v3", "yolov3_tiny"]
    assert {"darknet53", "darknet53_tiny", "mobilenet_v3_large", "mobilenet_v3_tiny"} <= (
        set(BACKBONES.names())
    )


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("darknet53", [256, 512, 1024]),
        ("darknet53_tiny", [64, 128, 256]),
        ("mobilenet_v3_large", [40, 112, 160]),
        ("mobilenet_v3_tiny", [16, 32, 48]),
    ],
)
def test_backbone_maps(name: str, channels: list[int]) -> None:
    net = BACKBONES.build({"type": name}).eval()
    assert net.out_channels == channels
    assert net.strides == [8, 16, 32]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 12), (4, 6), (2, 3)]


def test_darknet53_size() -> None:
    net = BACKBONES.build({"type": "darknet53"})
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 40.58) < 0.05
    stages = [sum(1 for m in s.modules() if type(m).__name__ == "DarkResidual") for s in net.stages]
    assert stages == [1, 2, 8, 8, 4]


def test_pretrained_loading(tmp_path) -> None:
    src = BACKBONES.build({"type": "darknet53_tiny"})
    path = tmp_path / "darknet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    net = BACKBONES.build({"type": "darknet53_tiny", "pretrained": str(path)})
    for k, v in src.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    # An official torchvision MobileNetV3-Large file loads into the det wrapper.
    tv = tvm.mobilenet_v3_large(weights=None)
    torch.save(tv.state_dict(), tmp_path / "mbv3.pt")
    net = BACKBONES.build({"type": "mobilenet_v3_large", "pretrained": str(tmp_path / "mbv3.pt")})
    torch.testing.assert_close(
        net.features[3].block[0][0].weight, tv.features[3].block[0][0].weight
    )
    with pytest.raises(ConfigError, match="not found"):
        BACKBONES.build({"type": "darknet53", "pretrained": str(tmp_path / "missing.pt")})


@pytest.mark.parametrize("spec", YOLO_TINY_SPECS, ids=lambda s: str(s.get("backbone", s["type"])))
def test_train_losses_backprop(spec: dict) -> None:
    net = build(spec).train()
    torch.manual_seed(1)
    losses = net(torch.randn(2, 3, 64, 64), targets())
    assert set(losses) == {"loss_xy", "loss_wh", "loss_obj", "loss_cls"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.heads[0].weight.grad.abs().sum() > 0
    assert next(net.backbone.parameters()).grad.abs().sum() > 0


def test_train_without_boxes_and_bad_targets() -> None:
    net = build({"type": "yolov3_tiny"}).train()
    x = torch.randn(2, 3, 64, 64)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = net(x, empty)
    assert losses["loss_xy"] == 0 and losses["loss_cls"] == 0 and losses["loss_obj"] > 0
    sum(losses.values()).backward()
    # Two GT boxes in one slot (same cell and anchor) with different classes: both classes set.
    same = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]] * 2), "labels": torch.tensor([0, 1])}]
    assert all(torch.isfinite(v) for v in net(x[:1], same).values())
    with pytest.raises(ValueError, match="needs targets"):
        net(x)
    with pytest.raises(ValueError, match="labels must lie"):
        net(x[:1], [{"boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]), "labels": torch.tensor([K])}])


@pytest.mark.parametrize("spec", YOLO_TINY_SPECS, ids=lambda s: str(s.get("backbone", s["type"])))
def test_eval_format_and_raw(spec: dict) -> None:
    net = build(spec).eval()
    net.score_thresh = 0.0  # an untrained net scores ~0.005: keep everything
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        boxes, scores = net.forward_raw(x)
        dets = net(x)
    n = num_anchors(64, 96)
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, K)
    assert (scores >= 0).all() and (scores <= 1).all()
    assert (boxes[..., 0::2] <= 96).all() and (boxes[..., 1::2] <= 64).all() and (boxes >= 0).all()
    assert isinstance(dets, list) and len(dets) == 2
    for det, ref in zip(dets, net.postprocess(boxes, scores), strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        m = len(det["scores"])
        assert 0 < m <= net.max_detections == 100
        assert det["boxes"].shape == (m, 4) and det["labels"].dtype == torch.int64
        assert (det["labels"] >= 0).all() and (det["labels"] < K).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        torch.testing.assert_close(det["boxes"], ref["boxes"])
    assert (net.score_thresh, net.nms_thresh) == (0.0, 0.45)


@pytest.mark.parametrize("name", YOLO_FULL)
def test_full_models_shapes(name: str) -> None:
    net = build({"type": name}, 80).eval()
    assert isinstance(net, Detector) and net.num_classes == 80 and net.strides == (8, 16, 32)
    with torch.no_grad():
        boxes, scores = net.forward_raw(torch.randn(1, 3, 64, 64))
        dets = net(torch.randn(1, 3, 64, 64))
    assert boxes.shape == (1, num_anchors(64, 64), 4) and scores.shape == (1, boxes.shape[1], 80)
    assert set(dets[0]) == {"boxes", "scores", "labels"}
    if name == "yolov3_darknet53":
        assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 61.95) < 0.05


@pytest.mark.parametrize("spec", YOLO_TINY_SPECS, ids=lambda s: str(s.get("backbone", s["type"])))
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
    for shape in [(1, 3, 64, 64), (2, 3, 96, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref_boxes, ref_scores = net.forward_raw(x)
        got_boxes, got_scores = session.run(None, {"image": x.numpy()})
        assert got_boxes.shape == tuple(ref_boxes.shape)
        np.testing.assert_allclose(got_boxes, ref_boxes.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_scores, ref_scores.numpy(), atol=1e-4, rtol=0)


def test_assign_targets_best_anchor_scale_and_cell() -> None:
    anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float32)  # (3, 3, 2)
    grids = [(52, 52), (26, 26), (13, 13)]  # 416 px
    boxes = torch.tensor(
        [
            [85.0, 30.0, 115.0, 91.0],  # 30x61 centred (100, 60.5): anchor (30, 61) -> stride 16
            [0.0, 0.0, 10.0, 13.0],  # 10x13 at the corner: the first anchor, cell (0, 0)
            [20.0, 200.0, 390.0, 410.0],  # 370x210: anchor (373, 326) of stride 32
            [400.0, 400.0, 416.0, 416.0],  # 16x16: anchor (16, 30), last cell of stride 8
        ]
    )
    level, anchor, gy, gx = assign_targets(boxes, anchors, (8, 16, 32), grids)
    assert level.tolist() == [1, 0, 2, 0]
    assert anchor.tolist()[:2] == [0, 0] and anchor.tolist()[3] == 1
    assert (gy.tolist()[0], gx.tolist()[0]) == (60 // 16, 100 // 16)
    assert (gy.tolist()[1], gx.tolist()[1]) == (0, 0)
    assert (gy.tolist()[2], gx.tolist()[2]) == (305 // 32, 205 // 32)
    assert (gy.tolist()[3], gx.tolist()[3]) == (51, 51)
    # the large box: IoU(370x210, 156x198) = 30888/77700 < IoU(370x210, 373x326) = 77700/121598
    assert anchor.tolist()[2] == 2
    # a centre exactly on the right/bottom edge stays in the last cell
    _, _, gy, gx = assign_targets(
        torch.tensor([[400.0, 400.0, 432.0, 432.0]]), anchors, (8, 16, 32), grids
    )
    assert 0 <= gx.item() < 52 and 0 <= gy.item() < 52


def test_ignore_mask_spares_good_unmatched_predictions() -> None:
    net = build({"type": "yolov3_tiny", "anchors": COCO_ANCHORS})
    pred = torch.zeros(1, 3, 4, 4, 5 + K)  # level 2 (stride 32) of a 128 px image
    # with zero outputs, anchor 1 of cell (1, 2) decodes to centre (80, 48), size 156x198
    gt = torch.tensor([[80.0 - 78, 48.0 - 99, 80.0 + 78, 48.0 + 99]])
    ignore = net._ignore_mask(pred, 2, gt, torch.zeros(1, dtype=torch.long), 1)
    assert ignore[0, 1, 1, 2]
    assert not ignore[0, 0, 3, 0] and not ignore[0, 2].any()
    assert ignore.sum() < ignore.numel() // 4


def test_anchor_config_forms() -> None:
    flat = [list(wh) for level in COCO_ANCHORS for wh in level]
    net = build({"type": "yolov3_tiny", "anchors": flat})
    torch.testing.assert_close(net.anchors, torch.tensor(COCO_ANCHORS, dtype=torch.float32))
    with pytest.raises(ConfigError, match="anchors"):
        build({"type": "yolov3_tiny", "anchors": [[10, 13], [16, 30]]})
    with pytest.raises(ConfigError, match="neck_channels"):
        build({"type": "yolov3_tiny", "neck_channels": [8, 16]})


def test_nms_helpers() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.0], [0.3, 0.8], [0.05, 0.2]])
    det = multiclass_nms(boxes, scores, score_thresh=0.1, nms_thresh=0.45, max_detections=10)
    # class 0 keeps box 0 (box 1 suppressed); class 1 keeps box 1 and box 2
    assert det["labels"].tolist() == [0, 1, 1]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.2])
    det = multiclass_nms(boxes, scores, 0.1, 0.45, max_detections=1)
    assert len(det["boxes"]) == 1
    b, s, lab = weighted_nms(boxes[:2], torch.tensor([0.75, 0.25]), torch.tensor([0, 0]), 0.5)
    assert len(b) == 1 and s.item() == 0.75 and lab.item() == 0
    torch.testing.assert_close(b[0], torch.tensor([0.25, 0.0, 10.25, 10.0]))


def synthetic_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """96x96 noise with two flat-coloured rectangles (class 0 and class 1)."""
    torch.manual_seed(0)
    img = torch.randn(1, 3, 96, 96) * 0.3
    boxes = torch.tensor([[16.0, 24.0, 56.0, 80.0], [52.0, 44.0, 92.0, 84.0]])
    img[0, :, 24:80, 16:56] = torch.tensor([1.5, -1.0, 0.5]).view(3, 1, 1)
    img[0, :, 44:84, 52:92] = torch.tensor([-1.0, 1.5, -0.5]).view(3, 1, 1)
    return img, boxes, torch.tensor([0, 1])


def test_tiny_yolov3_overfits_one_image() -> None:
    img, boxes, labels = synthetic_image()
    net = build({"type": "yolov3_tiny"}, 2).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = last = None
    for _ in range(60):
        losses = net(img, [{"boxes": boxes, "labels": labels}])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    # loss_xy is a BCE against soft targets: it cannot go below their entropy (~3 here)
    assert last < first / 4
    net.eval()
    with torch.no_grad():
        det = net(img)[0]
    top = det["scores"] > 0.5
    assert top.sum() == 2
    iou = box_iou(boxes, det["boxes"][top])
    best = iou.argmax(dim=1)
    assert (iou.max(dim=1).values > 0.5).all()
    assert det["labels"][top][best].tolist() == labels.tolist()
