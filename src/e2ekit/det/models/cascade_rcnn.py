"""Cascade R-CNN with FPN (Cai & Vasconcelos, "Cascade R-CNN: Delving into High Quality
Object Detection", CVPR 2018): PaddleDetection's ``cascade_rcnn_r50_fpn``.

The backbone, FPN, region proposal network and RoIAlign pooler are
:class:`~e2ekit.det.models.faster_rcnn.FasterRCNN`'s; its single box head becomes a cascade
of stages (three by default), each a torchvision ``RoIHeads`` with its own two-FC box head,
predictor, ``BoxCoder`` weights and ``Matcher`` IoU. Stage k+1 pools the boxes stage k
regressed, so every stage trains on proposals of the quality it is meant for (IoU 0.5 /
0.6 / 0.7) and the later ones learn to refine already good boxes (hence the tighter box
coder weights: their deltas are smaller).

* Box regression is class-agnostic (4 deltas per RoI), as in the paper, mmdet and
  PaddleDetection: a stage refines the box whatever its class.
* Training: each stage adds the ground truth to its input boxes, matches them at its IoU,
  samples ``roi_batch_size_per_image`` of them (torchvision's ``select_training_samples``)
  and computes torchvision's ``fastrcnn_loss``; the regressed sampled boxes (clipped,
  detached) go to the next stage, as in mmdet. Losses: ``loss_rpn_cls``, ``loss_rpn_box``,
  then per stage ``loss_s{k}_cls`` / ``loss_s{k}_box`` times ``stage_loss_weights[k]``.
* Test: the RPN proposals run through every stage; the class scores of a proposal are the
  mean of the stages' softmax scores along its chain of refinements, its box the last
  stage's regression (mmdet's and PaddleDetection's inference).

``forward_raw`` keeps Faster R-CNN's layout (one row per proposal and class, that class's
score only), so :meth:`Detector.postprocess` and the NMS export work unchanged, and raw
export is refused for the same reason (NMS inside the RPN).

``pretrained`` takes a Cascade R-CNN checkpoint (only the class-dependent predictors may
differ), a Faster R-CNN one (backbone, FPN and RPN load; the stage heads start fresh) or an
ImageNet backbone, like the Faster R-CNN builders.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Target
from e2ekit.det.models.faster_rcnn import (
    FasterRCNN,
    _build,
    _per_image_rows,
    faster_rcnn_r50_fpn,
    faster_rcnn_tiny,
    head_settings,
    load_detector_weights,
    narrow_resnet_fpn_maker,
    resnet50_fpn_maker,
)
from e2ekit.det.models.resnet_fpn import is_detector_checkpoint
from e2ekit.det.registry import MODELS

__all__ = [
    "AgnosticPredictor",
    "CascadeRCNN",
    "CascadeStages",
    "cascade_rcnn_r50_fpn",
    "cascade_rcnn_tiny",
    "load_cascade_weights",
]

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
# a Faster R-CNN checkpoint has one unnumbered box head
FASTER_RCNN_HEAD = "roi_heads.box_head."


@dataclass(frozen=True)
class CascadeStages:
    """Per-stage settings, checked once: IoU thresholds, loss weights, box coder weights."""

    ious: tuple[float, ...]
    loss_weights: tuple[float, ...]
    box_weights: tuple[tuple[float, float, float, float], ...]

    @classmethod
    def check(
        cls,
        ious: Sequence[float],
        loss_weights: Sequence[float],
        box_weights: Sequence[Sequence[float]],
    ) -> CascadeStages:
        lists = {
            "stage_ious": ious,
            "stage_loss_weights": loss_weights,
            "stage_box_weights": box_weights,
        }
        for key, value in lists.items():
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"model.{key} must be a non-empty list (one entry per stage)")
        lengths = {key: len(value) for key, value in lists.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(
                f"model.stage_ious, stage_loss_weights and stage_box_weights need one entry "
                f"per cascade stage each, got lengths {lengths}: give them the same length"
            )
        for iou in ious:
            if not 0 < float(iou) < 1:
                raise ConfigError(f"model.stage_ious must be in (0, 1), got {list(ious)}")
        if any(float(a) > float(b) for a, b in itertools.pairwise(ious)):
            raise ConfigError(
                f"model.stage_ious must not decrease (each stage trains on better boxes), "
                f"got {list(ious)}"
            )
        if any(float(w) < 0 for w in loss_weights) or not any(float(w) for w in loss_weights):
            raise ConfigError(
                f"model.stage_loss_weights must be >= 0 and not all 0, got {list(loss_weights)}"
            )
        for weights in box_weights:
            if (
                not isinstance(weights, (list, tuple))
                or len(weights) != 4
                or min(float(w) for w in weights) <= 0
            ):
                raise ConfigError(
                    "model.stage_box_weights: each stage needs 4 positive box coder weights "
                    f"(x, y, w, h), got {weights!r}"
                )
        return cls(
            tuple(float(i) for i in ious),
            tuple(float(w) for w in loss_weights),
            tuple(tuple(float(w) for w in ws) for ws in box_weights),  # type: ignore[misc]
        )


class AgnosticPredictor(FastRCNNPredictor):
    """torchvision's predictor with class-agnostic box regression: 4 deltas per RoI."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)


class CascadeRCNN(FasterRCNN):
    """Cascade R-CNN (see the module docstring): :class:`FasterRCNN`'s arguments plus

    Args:
        stage_ious: per stage, the IoU at which a box counts as foreground (and below which
            as background) for that stage's losses.
        stage_loss_weights: per stage, the factor on its two losses.
        stage_box_weights: per stage, the ``BoxCoder`` weights (x, y, w, h) its deltas are
            scaled by.

    ``roi_heads`` is a ``ModuleList`` of one torchvision ``RoIHeads`` per stage, sharing the
    pooler.
    """

    roi_heads: nn.ModuleList

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        strides: Sequence[int],
        roi_levels: Sequence[str],
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
        stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
        **kwargs: Any,
    ) -> None:
        # plain data, set before nn.Module's init: FasterRCNN's init builds the stages
        self.stages = CascadeStages.check(stage_ious, stage_loss_weights, stage_box_weights)
        super().__init__(num_classes, backbone, strides, roi_levels, **kwargs)

    def _make_roi_heads(
        self, pooler: MultiScaleRoIAlign, in_features: int, settings: dict[str, Any]
    ) -> nn.Module:
        size = self.representation_size
        return nn.ModuleList(
            RoIHeads(
                pooler,
                TwoMLPHead(in_features, size),
                AgnosticPredictor(size, self.num_classes + 1),  # + background
                fg_iou_thresh=iou,
                bg_iou_thresh=iou,
                bbox_reg_weights=weights,
                **settings,
            )
            for iou, weights in zip(self.stages.ious, self.stages.box_weights, strict=True)
        )

    def _stage(
        self, stage: RoIHeads, feats: dict[str, Tensor], boxes: list[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Class logits (sum N, C + 1) and this stage's regressed boxes (sum N, 4), clipped."""
        pooled = stage.box_roi_pool(feats, boxes, [size] * len(boxes))
        logits, deltas = stage.box_predictor(stage.box_head(pooled))
        refined = stage.box_coder.decode(deltas, boxes)[:, 0]
        return logits, box_ops.clip_boxes_to_image(refined, size)

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone(images)
        image_list = self._image_list(images)
        size = image_list.image_sizes[0]
        boxes, _ = self.rpn(image_list, feats)
        counts = [len(b) for b in boxes]
        scores = images.new_zeros(())
        for stage in self.roi_heads:
            logits, refined = self._stage(stage, feats, boxes, size)
            scores = scores + F.softmax(logits, -1)
            boxes = list(refined.split(counts))
        scores = scores[:, 1:] / len(self.roi_heads)  # drop the background column
        final = torch.cat(boxes)
        wide = (final[:, 2] - final[:, 0] >= 1e-2) & (final[:, 3] - final[:, 1] >= 1e-2)
        scores = scores * wide[:, None]  # torchvision drops boxes under 0.01 px before NMS
        per_class = final[:, None].expand(-1, self.num_classes, -1)
        return _per_image_rows(per_class, scores, counts)

    def losses(self, images: Tensor, targets: Sequence[Target]) -> dict[str, Tensor]:
        tgts = self._torchvision_targets(targets, images.device)
        feats = self.backbone(images)
        image_list = self._image_list(images)
        size = image_list.image_sizes[0]
        boxes, rpn_losses = self.rpn(image_list, feats, tgts)
        out = {
            "loss_rpn_cls": rpn_losses["loss_objectness"],
            "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
        }
        classes = self.num_classes + 1
        for k, (stage, weight) in enumerate(
            zip(self.roi_heads, self.stages.loss_weights, strict=True)
        ):
            boxes, _, labels, box_targets = stage.select_training_samples(boxes, tgts)
            pooled = stage.box_roi_pool(feats, boxes, image_list.image_sizes)
            logits, deltas = stage.box_predictor(stage.box_head(pooled))
            # fastrcnn_loss picks each RoI's class column: every column is the same deltas
            loss_cls, loss_box = fastrcnn_loss(
                logits, deltas.repeat(1, classes), labels, box_targets
            )
            out[f"loss_s{k}_cls"] = weight * loss_cls
            out[f"loss_s{k}_box"] = weight * loss_box
            if k + 1 < len(self.roi_heads):  # the next stage trains on these, not through them
                refined = stage.box_coder.decode(deltas.detach(), boxes)[:, 0]
                refined = box_ops.clip_boxes_to_image(refined, size)
                boxes = list(refined.split([len(b) for b in boxes]))
        return out


def load_cascade_weights(model: nn.Module, path: str | Path) -> None:
    """A Cascade R-CNN checkpoint (only the stage predictors may differ: another class
    count), or a Faster R-CNN one: its backbone, FPN and RPN load, the stages start fresh.
    """
    if is_detector_checkpoint(path, (FASTER_RCNN_HEAD,)):
        load_detector_weights(model, path, may_differ=("roi_heads.",))
        return
    stages = len(getattr(model, "roi_heads", ()))
    load_detector_weights(
        model, path, may_differ=tuple(f"roi_heads.{k}.box_predictor." for k in range(stages))
    )


# --------------------------------------------------------------------------- builders


def _stage_kwargs(
    ious: Sequence[float], loss_weights: Sequence[float], box_weights: Sequence[Sequence[float]]
) -> dict[str, Any]:
    return {
        "stage_ious": ious,
        "stage_loss_weights": loss_weights,
        "stage_box_weights": box_weights,
    }


@MODELS.register("cascade_rcnn_r50_fpn")
def cascade_rcnn_r50_fpn(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    stage_ious: Sequence[float] = STAGE_IOUS,
    stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
    stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
    **head: Any,
) -> CascadeRCNN:
    """Cascade R-CNN ResNet-50 FPN: PaddleDetection's ``cascade_rcnn_r50_fpn`` (the
    Faster R-CNN R50-FPN body, three 1024-wide stages at IoU 0.5 / 0.6 / 0.7).

    ``pretrained``: a local Cascade or Faster R-CNN checkpoint, or an ImageNet ResNet-50
    state dict (which also switches to frozen BN and ``trainable_layers`` 3 unless given).
    """
    kwargs = head_settings(faster_rcnn_r50_fpn, head, "cascade_rcnn_r50_fpn", "stage_*")
    kwargs |= _stage_kwargs(stage_ious, stage_loss_weights, stage_box_weights)
    backbone = resnet50_fpn_maker(fpn_channels, pretrained)
    return _build(
        num_classes,
        backbone,
        pretrained,
        trainable_layers,
        frozen_bn,
        kwargs,
        make_model=CascadeRCNN,
        load=load_cascade_weights,
    )  # type: ignore[return-value]


@MODELS.register("cascade_rcnn_tiny")
def cascade_rcnn_tiny(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks: int = 1,
    fpn_channels: int = 64,
    stage_ious: Sequence[float] = STAGE_IOUS,
    stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
    stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
    **head: Any,
) -> CascadeRCNN:
    """A small Cascade R-CNN for tests and quick CPU runs: ``faster_rcnn_tiny``'s body and
    RPN with three 256-wide stages (64 sampled RoIs per image and stage).
    """
    kwargs = head_settings(faster_rcnn_tiny, head, "cascade_rcnn_tiny", "stage_*")
    kwargs |= _stage_kwargs(stage_ious, stage_loss_weights, stage_box_weights)
    backbone = narrow_resnet_fpn_maker(widths, blocks, fpn_channels, pretrained)
    return _build(
        num_classes,
        backbone,
        pretrained,
        trainable_layers,
        frozen_bn,
        kwargs,
        make_model=CascadeRCNN,
        load=load_cascade_weights,
    )  # type: ignore[return-value]
