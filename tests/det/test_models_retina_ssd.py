"""RetinaNet and SSD detectors: the Detector contract, ONNX parity, overfitting, builders."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.ops import box_iou

from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Detector
from e2ekit.det.models.retinanet import (
    RetinaNet,
    retinanet_r18_fpn,
    retinanet_r50_fpn,
    retinanet_tiny,
)
from e2ekit.det.models.ssd import SSD, ssd_tiny, ssd_vgg16, ssdlite_mobilenet_v3
from e2ekit.det.registry import MODELS

NAMES = (
    "retinanet_r50_fpn",
    "retinanet_r18_fpn",
    "retinanet_tiny",
    "ssd_vgg16",
    "ssdlite_mobilenet_v3",
    "ssd_tiny",
)
TINY = {"retinanet_tiny": retinanet_tiny, "ssd_tiny": ssd_tiny}
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _tiny(name: str) -> Detector:
    torch.manual_seed(0)
    model = TINY[name](num_classes=NUM_CLASSES)
    if isinstance(model, RetinaNet):
        model.score_thresh = 0.005  # untrained scores sit at the 0.01 prior: keep some
    return model


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [30.0, 30.0, 50.0, 70.0]]),
            "labels": torch.tensor([0, 2]),
        },
        # no objects at all, plus (separately) a degenerate box that must be ignored
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
        {"boxes": torch.tensor([[40.0, 40.0, 40.0, 90.0]]), "labels": torch.tensor([1])},
    ]


class _Raw(nn.Module):
    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_raw(images)


# --------------------------------------------------------------------------- registry


def test_builders_registered_under_their_names():
    for name in NAMES:
        assert name in MODELS
    assert MODELS.get("retinanet_tiny") is retinanet_tiny
    assert MODELS.get("ssd_tiny") is ssd_tiny
    with pytest.raises(KeyError, match="already registered"):
        MODELS.register("retinanet_tiny")(lambda num_classes: None)
    MODELS.register("ssd_tiny")(ssd_tiny)  # re-registering the same builder is harmless


def test_build_from_spec_and_bad_kwarg():
    model = MODELS.build({"type": "retinanet_tiny", "num_classes": 2, "fpn_channels": 32})
    assert isinstance(model, Detector) and model.num_classes == 2
    with pytest.raises(ConfigError, match="anchor_size"):
        MODELS.build({"type": "retinanet_tiny", "num_classes": 2, "anchor_size": [8]})


# --------------------------------------------------------------------------- tiny contract


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_losses_finite_and_backward(name):
    model = _tiny(name).train()
    images = torch.randn(3, 3, 128, 160)
    losses = model(images, _targets())
    assert set(losses) == {"loss_cls", "loss_box"}
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="targets"):
        model(images)


@pytest.mark.parametrize("name", sorted(TINY))
def test_eval_format_and_raw_shapes(name):
    model = _tiny(name).eval()
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        boxes, scores = model.forward_raw(images)
        dets = model(images)
    expected_anchors = {
        # 9 anchors on P3-P5 (16x20, 8x10, 4x5)
        "retinanet_tiny": 9 * (16 * 20 + 8 * 10 + 4 * 5),
        # 4 default boxes on strides 8/16/32/64 (16x20, 8x10, 4x5, 2x3)
        "ssd_tiny": 4 * (16 * 20 + 8 * 10 + 4 * 5 + 2 * 3),
    }[name]
    assert boxes.shape == (2, expected_anchors, 4)
    assert scores.shape == (2, expected_anchors, NUM_CLASSES)
    assert (scores >= 0).all() and (scores <= 1).all()
    if isinstance(model, SSD):  # foreground part of a softmax with background
        assert (scores.sum(-1) <= 1 + 1e-6).all()
    assert (boxes[..., 0::2] >= 0).all() and (boxes[..., 0::2] <= 160).all()
    assert (boxes[..., 1::2] >= 0).all() and (boxes[..., 1::2] <= 128).all()
    assert isinstance(dets, list) and len(dets) == 2
    for det in dets:
        assert set(det) == {"boxes", "scores", "labels"}
        m = det["scores"].shape[0]
        assert 0 < m <= model.max_detections
        assert det["boxes"].shape == (m, 4) and det["labels"].shape == (m,)
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
        assert (det["scores"] > model.score_thresh).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_postprocess_of_raw_equals_eval_forward(name):
    model = _tiny(name).eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        direct = model(images)
        split = model.postprocess(*model.forward_raw(images))
    assert len(direct) == len(split) == 2
    for a, b in zip(direct, split, strict=True):
        assert a["scores"].numel() > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_export_of_raw_matches_onnxruntime(name):
    model = _tiny(name).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Raw(model).eval(),  # export restores the wrapper's mode onto the model
            (torch.randn(1, 3, 128, 160),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["boxes", "scores"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "boxes": {0: "batch", 1: "anchors"},
                "scores": {0: "batch", 1: "anchors"},
            },
        )
    assert not model.training
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    # the export size, then another batch and spatial size (dynamic axes really work)
    for shape in [(1, 3, 128, 160), (2, 3, 160, 192)]:
        images = torch.randn(*shape)
        with torch.no_grad():
            boxes, scores = model.forward_raw(images)
        got_boxes, got_scores = session.run(None, {"images": images.numpy()})
        assert got_boxes.shape == tuple(boxes.shape)
        assert got_scores.shape == tuple(scores.shape)
        assert np.abs(got_scores - scores.numpy()).max() < 1e-4
        # Boxes are pixels: centre and size of ~100 px each carry float32 rounding of ~1e-5
        # relative, which exp() and the corner subtraction turn into ~1e-4 px. Bound them by
        # 1e-3 px, i.e. under 1e-5 of the image side.
        assert np.abs(got_boxes - boxes.numpy()).max() < 1e-3


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_overfits_one_image(name):
    """retinanet_tiny (the required check) and ssd_tiny (its loss and label shift) alike."""
    torch.manual_seed(0)
    size = 128
    image = torch.full((1, 3, size, size), -0.5)
    image[0, 0, 20:60, 16:76] = 1.5  # a wide red-ish box
    image[0, 2, 70:118, 80:112] = 1.5  # a tall blue-ish box
    gt_boxes = torch.tensor([[16.0, 20.0, 76.0, 60.0], [80.0, 70.0, 112.0, 118.0]])
    gt_labels = torch.tensor([0, 1])
    targets = [{"boxes": gt_boxes, "labels": gt_labels}]
    model = TINY[name](num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():  # one-off kernel set-up is not training time
        model.eval()(image)
    found = False
    for step in range(1, 151):
        model.train()
        loss = sum(model(image, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                det = model(image)[0]
            ious, scores = [], []
            for box, label in zip(gt_boxes, gt_labels, strict=True):
                mine = det["labels"] == label  # detections are sorted by score
                best = det["boxes"][mine][:1]
                ious.append(box_iou(box[None], best).max().item() if len(best) else 0.0)
                scores.append(det["scores"][mine][:1].sum().item())
            if min(ious) > 0.5 and min(scores) > 0.5:
                found = True
                break
    # a step budget, not a time limit: timing never goes into an assertion
    assert found, f"not both boxes after {step} steps (IoUs {ious}, scores {scores})"


# --------------------------------------------------------------------------- full size


@pytest.mark.parametrize(
    ("builder", "size", "levels"),
    [
        (retinanet_r50_fpn, 128, [16, 8, 4, 2, 1]),
        (retinanet_r18_fpn, 128, [16, 8, 4, 2, 1]),
    ],
)
def test_full_retinanet_shapes(builder, size, levels):
    model = builder(num_classes=NUM_CLASSES).eval()
    assert model.strides == (8, 16, 32, 64, 128)
    with torch.no_grad():
        boxes, scores = model.forward_raw(torch.randn(1, 3, size, size))
    anchors = 9 * sum(n * n for n in levels)
    assert boxes.shape == (1, anchors, 4) and scores.shape == (1, anchors, NUM_CLASSES)
    assert (model.score_thresh, model.nms_thresh) == (0.05, 0.5)
    assert (model.max_detections, model.topk_candidates) == (100, 1000)


@pytest.mark.parametrize(
    ("builder", "size", "anchors"),
    [
        # SSDLite320: 6 maps of 6 boxes; at 160 px: 10, 5, 3, 2, 1, 1
        (ssdlite_mobilenet_v3, 160, 6 * (100 + 25 + 9 + 4 + 1 + 1)),
        # SSD300 needs >= 268 px; there: 34, 17, 9, 5, 3, 1 with 4/6/6/6/4/4 boxes
        (ssd_vgg16, 268, 4 * 34**2 + 6 * 17**2 + 6 * 9**2 + 6 * 5**2 + 4 * 3**2 + 4),
    ],
)
def test_full_ssd_shapes(builder, size, anchors):
    model = builder(num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        boxes, scores = model.forward_raw(torch.randn(1, 3, size, size))
    assert boxes.shape == (1, anchors, 4) and scores.shape == (1, anchors, NUM_CLASSES)


def test_ssd300_has_8732_default_boxes_at_300():
    model = ssd_vgg16(num_classes=1).eval()
    feats = list(model.backbone(torch.zeros(1, 3, 300, 300)).values())
    assert model._default_boxes(torch.zeros(1, 3, 300, 300), feats).shape == (8732, 4)


# --------------------------------------------------------------------------- weights, options


def test_pretrained_detector_checkpoint_round_trip(tmp_path):
    source = _tiny("retinanet_tiny")
    path = tmp_path / "det.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = retinanet_tiny(num_classes=NUM_CLASSES, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # another class count: everything but the classifier loads
    other = retinanet_tiny(num_classes=5, pretrained=str(path))
    head = "head.classification_head.cls_logits.weight"
    assert other.state_dict()[head].shape[0] == 9 * 5
    key = "backbone.fpn.layer_blocks.0.0.weight"
    assert torch.equal(other.state_dict()[key], source.state_dict()[key])
    with pytest.raises(ConfigError, match="not found"):
        retinanet_tiny(num_classes=2, pretrained=str(tmp_path / "missing.pt"))


def test_pretrained_imagenet_backbone_freezes_like_torchvision(tmp_path):
    path = tmp_path / "resnet18.pth"
    reference = tvm.resnet18(weights=None).state_dict()
    torch.save(reference, path)
    model = retinanet_r18_fpn(num_classes=2, pretrained=str(path))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])
    assert type(body.bn1).__name__ == "FrozenBatchNorm2d"
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


def test_retinanet_on_a_registered_backbone_and_ssd_aspect_ratios():
    seg_resnet = {"type": "e2ekit.seg.backbones.resnet:resnet_tiny"}  # another kit's, by path
    model = retinanet_tiny(num_classes=2, backbone=seg_resnet).eval()
    ssd = ssd_tiny(num_classes=2, aspect_ratios=[[2, 3]] * 4).eval()
    with torch.no_grad():
        boxes, _ = model.forward_raw(torch.randn(1, 3, 64, 64))
        ssd_boxes, _ = ssd.forward_raw(torch.randn(1, 3, 64, 64))
    assert boxes.shape == (1, 9 * (8 * 8 + 4 * 4 + 2 * 2), 4)
    assert ssd_boxes.shape == (1, 6 * (8 * 8 + 4 * 4 + 2 * 2 + 1), 4)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        retinanet_tiny(num_classes=2, anchor_sizes=(16, 32))
    with pytest.raises(ConfigError, match="box_loss"):
        retinanet_tiny(num_classes=2, box_loss="l3")


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_retinanet_box_loss_options(box_loss):
    torch.manual_seed(0)
    model = retinanet_tiny(num_classes=NUM_CLASSES, box_loss=box_loss).train()
    losses = model(torch.randn(3, 3, 96, 96), _targets())
    assert torch.isfinite(losses["loss_box"]) and losses["loss_box"] > 0
