"""Cascade R-CNN: builds from the shipped configs, per-stage settings (IoU, box coder, loss
weight) reach the stages, the Detector contract, the stage-mean scores, weights from a
Faster R-CNN or a Cascade R-CNN checkpoint, CLI training and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

from e2ekit.core.config import load_config
from e2ekit.core.errors import ConfigError
from e2ekit.det.config import DetConfig
from e2ekit.det.models.base import Detector
from e2ekit.det.models.cascade_rcnn import CascadeRCNN, cascade_rcnn_tiny
from e2ekit.det.models.faster_rcnn import FasterRCNN, faster_rcnn_tiny
from e2ekit.det.registry import MODELS
from e2ekit.det.task import DetTask

from ..conftest import ROOT
from .rcnn_helpers import assert_eval_contract, one_thread, shapes_batch  # noqa: F401

CONFIGS = ROOT / "configs" / "det"
NUM_CLASSES = 3
STAGE_LOSSES = {f"loss_s{k}_{part}" for k in range(3) for part in ("cls", "box")}
LOSSES = {"loss_rpn_cls", "loss_rpn_box", *STAGE_LOSSES}


def _tiny(**kwargs) -> CascadeRCNN:
    torch.manual_seed(0)
    return cascade_rcnn_tiny(num_classes=NUM_CLASSES, **kwargs)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [30.0, 30.0, 50.0, 70.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def _shapes(n: int, size: int = 128) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    return shapes_batch(n, NUM_CLASSES, size)


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("name", ["cascade_rcnn_tiny", "cascade_rcnn_r50_fpn"])
def test_builds_from_its_config_with_three_stages(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", DetConfig, [])
    det = DetTask(cfg).build_detector()  # r50: build only (random init, no forward)
    assert isinstance(det, CascadeRCNN) and isinstance(det, Detector)
    assert MODELS.get(name) is not None
    assert det.num_classes == 4  # the built-in shapes classes
    assert len(det.roi_heads) == 3
    ious = [s.proposal_matcher.high_threshold for s in det.roi_heads]
    assert ious == pytest.approx([0.5, 0.6, 0.7])
    assert [s.proposal_matcher.low_threshold for s in det.roi_heads] == ious
    assert [s.box_coder.weights for s in det.roi_heads] == [
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    ]
    assert det.stages.loss_weights == (1.0, 0.5, 0.25)
    for stage in det.roi_heads:
        assert stage.box_predictor.cls_score.out_features == 4 + 1  # + background
        assert stage.box_predictor.bbox_pred.out_features == 4  # class-agnostic
    heads = [s.box_head.fc6.weight for s in det.roi_heads]  # one head per stage, not shared
    assert len({h.data_ptr() for h in heads}) == 3


def test_stage_settings_are_validated() -> None:
    base = {"type": "cascade_rcnn_tiny", "num_classes": 2}
    bad = {
        "stage_ious": [0.5, 0.6],  # two stages, three of the others
        "stage_loss_weights": [1.0],
        "stage_box_weights": [[10, 10, 5, 5]],
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError, match="same length"):
            MODELS.build({**base, key: value})
    with pytest.raises(ConfigError, match=r"stage_ious must be in \(0, 1\)"):
        MODELS.build({**base, "stage_ious": [0.5, 0.6, 1.2]})
    with pytest.raises(ConfigError, match="stage_ious must not decrease"):
        MODELS.build({**base, "stage_ious": [0.5, 0.7, 0.6]})
    with pytest.raises(ConfigError, match="stage_loss_weights must be >= 0"):
        MODELS.build({**base, "stage_loss_weights": [1.0, -0.5, 0.25]})
    with pytest.raises(ConfigError, match="stage_box_weights: each stage needs 4"):
        MODELS.build({**base, "stage_box_weights": [[10, 10, 5, 5], [20, 20, 10], [1, 1, 1, 1]]})
    with pytest.raises(ConfigError, match="non-empty list"):
        MODELS.build({**base, "stage_ious": 0.5})
    # another stage count is fine when all three lists agree
    two = MODELS.build(
        {
            **base,
            "stage_ious": [0.5, 0.65],
            "stage_loss_weights": [1, 1],
            "stage_box_weights": [[10, 10, 5, 5], [25, 25, 12, 12]],
        }
    )
    assert len(two.roi_heads) == 2 and two.roi_heads[1].proposal_matcher.high_threshold == 0.65


def test_raw_export_is_refused_like_faster_rcnn() -> None:
    assert CascadeRCNN.raw_export_refused == FasterRCNN.raw_export_refused


# --------------------------------------------------------------------------- training


def test_training_returns_all_losses_and_every_stage_learns() -> None:
    model = _tiny().train()
    losses = model(torch.randn(2, 3, 128, 160), _targets())
    assert list(losses) == [
        "loss_rpn_cls",
        "loss_rpn_box",
        "loss_s0_cls",
        "loss_s0_box",
        "loss_s1_cls",
        "loss_s1_box",
        "loss_s2_cls",
        "loss_s2_box",
    ]
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for stage in model.roi_heads:
        assert stage.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
        assert stage.box_head.fc6.weight.grad.abs().sum() > 0


def test_stage_loss_weights_scale_the_stage_losses() -> None:
    images, targets = torch.randn(2, 3, 128, 160), _targets()
    plain = _tiny(stage_loss_weights=[1.0, 1.0, 1.0]).train()
    weighted = _tiny().train()  # same seed: same parameters
    torch.manual_seed(5)  # the samplers draw at random: same draws for both
    ones = plain(images, targets)
    torch.manual_seed(5)
    scaled = weighted(images, targets)
    for k, w in enumerate((1.0, 0.5, 0.25)):
        for part in ("cls", "box"):
            key = f"loss_s{k}_{part}"
            torch.testing.assert_close(scaled[key], w * ones[key], msg=key)
    assert ones["loss_s2_cls"] > 0 and ones["loss_s2_box"] > 0


def test_losses_decrease_on_shapes() -> None:
    images, targets = _shapes(3)
    model = _tiny(roi_batch_size_per_image=32).train()  # three heads: keep the test fast
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(20):
        losses = model(images, targets)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    first = {k: np.mean([h[k] for h in history[:3]]) for k in LOSSES}
    last = {k: np.mean([h[k] for h in history[-3:]]) for k in LOSSES}
    assert sum(last.values()) < 0.6 * sum(first.values()), (first, last)
    for key in ("loss_rpn_cls", "loss_s0_cls", "loss_s1_cls", "loss_s2_cls"):
        assert last[key] < first[key], (key, first[key], last[key])


# --------------------------------------------------------------------------- eval


def test_eval_output_contract() -> None:
    assert_eval_contract(_tiny(max_detections=7, score_thresh=0.0).eval(), NUM_CLASSES, 7)


def test_scores_are_the_stage_mean_on_the_last_stage_boxes() -> None:
    """Each stage refines the previous stage's boxes; a proposal's class scores are the
    mean of the three softmaxes along that chain, its box the last regression."""
    model = _tiny().eval()
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        rows_b, rows_s = model.forward_raw(images)
        feats = model.backbone(images)
        size = (128, 160)
        (boxes,), _ = model.rpn(ImageList(images, [size]), feats)
        probs = []
        for stage in model.roi_heads:
            pooled = stage.box_roi_pool(feats, [boxes], [size])
            logits, deltas = stage.box_predictor(stage.box_head(pooled))
            probs.append(F.softmax(logits, -1)[:, 1:])
            decoded = stage.box_coder.decode(deltas, [boxes])[:, 0]
            boxes = decoded.clamp(min=0).minimum(torch.tensor([160.0, 128.0, 160.0, 128.0]))
    mean = torch.stack(probs).mean(0)
    assert not torch.allclose(probs[0], probs[2])  # the stages do differ
    torch.testing.assert_close(rows_s[0].reshape(-1, NUM_CLASSES, NUM_CLASSES).sum(-1), mean)
    for c in range(NUM_CLASSES):
        torch.testing.assert_close(rows_b[0].reshape(-1, NUM_CLASSES, 4)[:, c], boxes)


# --------------------------------------------------------------------------- weights


def test_faster_rcnn_weights_load_into_backbone_and_rpn(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = faster_rcnn_tiny(num_classes=NUM_CLASSES)
    path = tmp_path / "frcnn.pt"
    torch.save({"model": source.state_dict()}, path)
    fresh = _tiny()
    loaded = _tiny(pretrained=str(path))
    mine = loaded.state_dict()
    shared = [k for k in mine if k.startswith(("backbone.", "rpn."))]
    assert len(shared) > 20
    for key in shared:  # frozen BN under pretrained weights: no num_batches_tracked
        torch.testing.assert_close(mine[key], source.state_dict()[key], msg=key)
    # the stages have no Faster R-CNN counterpart: they start as a fresh model's
    torch.testing.assert_close(
        loaded.roi_heads[0].box_head.fc6.weight, fresh.roi_heads[0].box_head.fc6.weight
    )


def test_cascade_weights_round_trip_and_other_class_counts(tmp_path: Path) -> None:
    source = _tiny()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1)
    path = tmp_path / "cascade.pt"
    torch.save(source.state_dict(), path)
    loaded = cascade_rcnn_tiny(num_classes=NUM_CLASSES, pretrained=str(path))
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)
    other = cascade_rcnn_tiny(num_classes=NUM_CLASSES + 2, pretrained=str(path))
    torch.testing.assert_close(
        other.roi_heads[2].box_head.fc7.weight, source.roi_heads[2].box_head.fc7.weight
    )
    assert other.roi_heads[2].box_predictor.cls_score.out_features == NUM_CLASSES + 3
    wider = tmp_path / "wider.pt"
    torch.save(_tiny(representation_size=64).state_dict(), wider)
    with pytest.raises(ConfigError, match="does not fit CascadeRCNN"):
        _tiny(pretrained=str(wider))


# --------------------------------------------------------------------------- CLI


def test_cli_trains_and_exports_end_to_end(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        "det", "train", "-c", CONFIGS / "cascade_rcnn_tiny.yaml",
        "-o", "train.max_steps=4", "-o", "train.batch_size=4", "-o", "train.eval_interval=4",
        "-o", "train.tensorboard=false",
        "-o", "data.builtin={num_train: 8, num_val: 4, size: 128}",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mAP", "AP50"} <= set(metrics)
    assert 0.0 <= metrics["AP50"] <= 1.0 and 0.0 <= metrics["mAP"] <= metrics["AP50"] + 1e-9
    code, _, err = cli("det", "export", "--weights", out, "--out", tmp_path / "export")
    assert code == 0, err
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["onnx"]["max_abs_diff"] <= 1e-3
    code, _, err = cli(
        "det", "export", "--weights", out, "-o", "export.nms=false", "--out", tmp_path / "raw"
    )
    assert code != 0 and "export.nms: false is not available" in err and "proposal" in err


def test_head_settings_follow_faster_rcnn_and_unknown_ones_are_refused() -> None:
    from e2ekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.rpn_nms_treshold.*stage_\*"):
        _tiny(rpn_nms_treshold=0.5)
    model = _tiny(rpn_nms_thresh=0.6, roi_batch_size_per_image=32)
    assert model.rpn.nms_thresh == pytest.approx(0.6)
    assert all(h.fg_bg_sampler.batch_size_per_image == 32 for h in model.roi_heads)
