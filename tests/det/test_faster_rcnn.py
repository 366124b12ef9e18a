"""Faster R-CNN + FPN: builds from the shipped configs, the Detector contract (four losses,
eval output equal to torchvision's post-processing), freezing, local weights, CLI training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from e2ekit.core.config import load_config
from e2ekit.core.errors import ConfigError, DataError
from e2ekit.det.config import DetConfig
from e2ekit.det.models.base import Detector
from e2ekit.det.models.faster_rcnn import (
    FasterRCNN,
    _per_image_rows,
    faster_rcnn_mobilenet_v3_fpn,
    faster_rcnn_tiny,
)
from e2ekit.det.models.resnet_fpn import NarrowResNet
from e2ekit.det.models.retinanet import retinanet_tiny
from e2ekit.det.registry import MODELS
from e2ekit.det.task import DetTask

from ..conftest import ROOT
from .rcnn_helpers import assert_eval_contract, one_thread, shapes_batch  # noqa: F401

CONFIGS = ROOT / "configs" / "det"
LOSSES = {"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}
NUM_CLASSES = 3


def _tiny(**kwargs) -> FasterRCNN:
    torch.manual_seed(0)
    return faster_rcnn_tiny(num_classes=NUM_CLASSES, **kwargs)


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


def _shapes(n: int, size: int = 128) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    return shapes_batch(n, NUM_CLASSES, size)


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize(
    "name", ["faster_rcnn_tiny", "faster_rcnn_r50_fpn", "faster_rcnn_mobilenet_v3_fpn"]
)
def test_builds_from_its_config(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", DetConfig, [])
    det = DetTask(cfg).build_detector()  # r50: build only (random init, no forward)
    assert isinstance(det, FasterRCNN) and isinstance(det, Detector)
    assert MODELS.get(name) is not None
    assert det.num_classes == 4  # the built-in shapes classes
    assert det.roi_heads.box_predictor.cls_score.out_features == 4 + 1  # + background
    assert det.roi_heads.box_predictor.bbox_pred.out_features == (4 + 1) * 4
    assert len(det.strides) == len(det.rpn.anchor_generator.sizes)


def test_mobilenet_is_torchvisions_layout() -> None:
    det = faster_rcnn_mobilenet_v3_fpn(num_classes=2, representation_size=64)
    assert det.strides == (32, 32, 64)
    assert det.rpn.anchor_generator.num_anchors_per_location() == [15, 15, 15]
    assert det.rpn.score_thresh == pytest.approx(0.05)
    assert det.roi_heads.box_roi_pool.featmap_names == ["0", "1"]
    with torch.no_grad():
        levels = det.backbone.eval()(torch.zeros(1, 3, 128, 128))
    assert list(levels) == ["0", "1", "pool"]
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(4, 4), (4, 4), (2, 2)]


def test_bad_settings_fail_at_build() -> None:
    with pytest.raises(ConfigError, match="anchor_sizes"):
        faster_rcnn_tiny(num_classes=2, anchor_sizes=[16, 32])
    with pytest.raises(ConfigError, match="roi_positive_fraction"):
        faster_rcnn_tiny(num_classes=2, roi_positive_fraction=0)
    with pytest.raises(ConfigError, match="rpn_post_nms_top_n_test"):
        faster_rcnn_tiny(num_classes=2, rpn_post_nms_top_n_test=0)
    with pytest.raises(ConfigError, match="anchor_size"):  # an unknown key names itself
        MODELS.build({"type": "faster_rcnn_tiny", "num_classes": 2, "anchor_size": [8]})


def test_raw_export_is_refused_with_a_reason() -> None:
    reason = FasterRCNN.raw_export_refused
    assert reason and "NMS" in reason and "export.nms: true" in reason
    assert getattr(retinanet_tiny(num_classes=2), "raw_export_refused", None) is None


# --------------------------------------------------------------------------- training


def test_training_returns_the_four_losses_and_backpropagates() -> None:
    model = _tiny().train()
    losses = model(torch.randn(3, 3, 128, 160), _targets())
    assert set(losses) == LOSSES
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="targets"):
        model(torch.randn(1, 3, 128, 160))


def test_labels_out_of_range_are_a_data_error() -> None:
    target = {"boxes": torch.tensor([[1.0, 1.0, 30.0, 30.0]]), "labels": torch.tensor([3])}
    with pytest.raises(DataError, match=r"0\.\.2"):
        _tiny().train()(torch.randn(1, 3, 64, 64), [target])


def test_losses_decrease_on_shapes() -> None:
    images, targets = _shapes(4)
    model = _tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = model(images, targets)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    first = {k: np.mean([h[k] for h in history[:3]]) for k in LOSSES}
    last = {k: np.mean([h[k] for h in history[-3:]]) for k in LOSSES}
    assert sum(last.values()) < 0.6 * sum(first.values()), (first, last)
    for key in ("loss_rpn_cls", "loss_rcnn_cls"):
        assert last[key] < first[key], (key, first[key], last[key])


# --------------------------------------------------------------------------- eval


def test_eval_output_contract() -> None:
    assert_eval_contract(_tiny(max_detections=7, score_thresh=0.0).eval(), NUM_CLASSES, 7)


def test_eval_equals_torchvision_postprocessing_with_labels_shifted() -> None:
    """Our rows + class-wise NMS give torchvision's ``postprocess_detections``, labels - 1."""
    images, targets = _shapes(2)
    model = _tiny(score_thresh=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(4):  # a few steps, so that scores are not all near 1/(C+1)
        opt.zero_grad()
        sum(model.train()(images, targets).values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ours = model(images)
        feats = model.backbone(images)
        sizes = [tuple(images.shape[-2:])] * 2
        proposals, _ = model.rpn(ImageList(images, sizes), feats)
        theirs, _ = model.roi_heads(feats, proposals, sizes)
    assert sum(len(d["scores"]) for d in ours) > 0
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"] + 1, b["labels"])


def test_rows_pad_images_with_fewer_proposals() -> None:
    boxes = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)  # 3 proposals, C=2
    scores = torch.tensor([[0.1, 0.9], [0.6, 0.3], [0.7, 0.2]])
    rows_b, rows_s = _per_image_rows(boxes, scores, [2, 1])
    assert rows_b.shape == (2, 4, 4) and rows_s.shape == (2, 4, 2)
    torch.testing.assert_close(rows_b[0], boxes[:2].reshape(4, 4))
    torch.testing.assert_close(rows_s[0], torch.tensor([[0.1, 0], [0, 0.9], [0.6, 0], [0, 0.3]]))
    torch.testing.assert_close(rows_b[1, :2], boxes[2])
    torch.testing.assert_close(rows_s[1], torch.tensor([[0.7, 0], [0, 0.2], [0, 0], [0, 0]]))
    assert (rows_b[1, 2:] == 0).all()


# --------------------------------------------------------------------------- freezing


def test_trainable_layers_and_frozen_bn_freeze_what_they_say() -> None:
    model = _tiny(trainable_layers=2, frozen_bn=True)
    body = model.backbone.body
    for name, param in body.named_parameters():
        assert param.requires_grad == name.startswith(("layer3", "layer4")), name
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.rpn.parameters())
    assert all(p.requires_grad for p in model.roi_heads.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    default = _tiny()  # from scratch: everything trains, batch statistics
    assert all(p.requires_grad for p in default.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in default.backbone.body.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in default.modules())
    with pytest.raises(ConfigError, match="trainable_layers"):
        _tiny(trainable_layers=6)


def test_mobilenet_trainable_layers() -> None:
    model = faster_rcnn_mobilenet_v3_fpn(
        num_classes=2, trainable_layers=0, frozen_bn=True, representation_size=32
    )
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    with pytest.raises(ConfigError, match="trainable_layers"):
        faster_rcnn_mobilenet_v3_fpn(num_classes=2, trainable_layers=9, representation_size=32)


# --------------------------------------------------------------------------- weights


def test_pretrained_detector_loads_and_implies_frozen_early_stages(tmp_path: Path) -> None:
    source = _tiny()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1)
    path = tmp_path / "frcnn.pt"
    torch.save({"model": source.state_dict()}, path)
    torch.manual_seed(1)
    loaded = faster_rcnn_tiny(num_classes=NUM_CLASSES, pretrained=str(path))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)
    # torchvision's defaults under pretrained weights: frozen BN, conv1 + layer1 frozen
    assert isinstance(loaded.backbone.body.bn1, FrozenBatchNorm2d)
    assert not loaded.backbone.body.layer1[0].conv1.weight.requires_grad
    assert loaded.backbone.body.layer2[0].conv1.weight.requires_grad
    # another class count: everything but the predictor loads
    other = faster_rcnn_tiny(num_classes=NUM_CLASSES + 2, pretrained=str(path))
    torch.testing.assert_close(other.rpn.head.cls_logits.weight, source.rpn.head.cls_logits.weight)
    assert other.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES + 3


def test_pretrained_backbone_loads_into_the_resnet(tmp_path: Path) -> None:
    net = NarrowResNet()
    path = tmp_path / "resnet.pt"
    torch.save(net.state_dict(), path)
    model = _tiny(pretrained=str(path))
    torch.testing.assert_close(model.backbone.body.conv1.weight, net.conv1.weight)
    torch.testing.assert_close(
        model.backbone.body.layer4[0].conv2.weight, net.layer4[0].conv2.weight
    )


def test_wrong_pretrained_fails_clearly(tmp_path: Path) -> None:
    retina = tmp_path / "retina.pt"
    torch.save(retinanet_tiny(num_classes=NUM_CLASSES).state_dict(), retina)
    with pytest.raises(ConfigError, match="no tensor matches"):
        _tiny(pretrained=str(retina))
    wider = tmp_path / "wider.pt"
    torch.save(_tiny(fpn_channels=32).state_dict(), wider)
    with pytest.raises(ConfigError, match="does not fit FasterRCNN"):
        _tiny(pretrained=str(wider))
    with pytest.raises(ConfigError, match="not found"):
        _tiny(pretrained=str(tmp_path / "missing.pt"))


# --------------------------------------------------------------------------- CLI


def test_cli_trains_end_to_end(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        "det", "train", "-c", CONFIGS / "faster_rcnn_tiny.yaml",
        "-o", "train.max_steps=4", "-o", "train.batch_size=4", "-o", "train.eval_interval=4",
        "-o", "train.tensorboard=false",
        "-o", "data.builtin={num_train: 8, num_val: 4, size: 128}",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mAP", "AP50"} <= set(metrics)
    assert 0.0 <= metrics["AP50"] <= 1.0 and 0.0 <= metrics["mAP"] <= metrics["AP50"] + 1e-9
    # NMS inside the graph: the RPN and RoI heads trace, and ONNX matches PyTorch
    code, _, err = cli("det", "export", "--weights", out, "--out", tmp_path / "export")
    assert code == 0, err
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["onnx"]["max_abs_diff"] <= 1e-3
    code, _, err = cli(
        "det", "export", "--weights", out, "-o", "export.nms=false", "--out", tmp_path / "raw"
    )
    assert code != 0 and "export.nms: false is not available" in err and "proposal" in err
    assert not (tmp_path / "raw").exists()
