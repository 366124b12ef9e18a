"""The contract every detector follows, plus the NMS and backbone helpers they share.

A detector is an ``nn.Module`` with one ``forward(images, targets=None)``:

- ``images``: float (B, 3, H, W), already normalised.
- ``targets`` (training only): one dict per image, ``{"boxes": float32 (N, 4) xyxy in
  input pixels, "labels": int64 (N,) in 0..num_classes-1}``; N may be 0.
- training mode returns ``dict[str, Tensor]`` of scalar losses (the engine sums them);
- eval mode returns one dict per image, ``{"boxes" (M, 4) xyxy input pixels, "scores" (M,),
  "labels" (M,)}``, after score threshold, class-wise NMS and ``max_detections``.

Eval mode is exactly ``postprocess(*forward_raw(images))``: :meth:`Detector.forward_raw` is
everything but NMS (decoded boxes and per-class probabilities for every anchor/location,
traceable by ``torch.onnx.export`` with dynamic batch and size: "export without NMS") and
:meth:`Detector.postprocess` is the data-dependent part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from e2ekit.core.errors import ConfigError
from e2ekit.det.registry import BACKBONES

__all__ = [
    "Detection",
    "Detector",
    "Target",
    "build_backbone",
    "clip_boxes",
    "multiclass_nms",
    "weighted_nms",
]

Target = dict[str, torch.Tensor]  # {"boxes": (N, 4) xyxy pixels, "labels": (N,) int64}
Detection = dict[str, torch.Tensor]  # {"boxes": (M, 4), "scores": (M,), "labels": (M,)}


class Detector(nn.Module):
    """Base class: training losses, raw (exportable) outputs and NMS post-processing.

    Subclasses implement :meth:`forward_raw` and :meth:`losses`; they set ``strides`` where
    the model has feature levels.

    Args:
        num_classes: foreground classes; labels are 0..num_classes-1.
        score_thresh: candidates scoring at most this are dropped before NMS.
        nms_thresh: IoU above which a lower-scoring box of the same class is suppressed.
        max_detections: boxes kept per image after NMS.
        pre_nms_topk: best candidates per image entering NMS (bounds NMS cost).
        weighted_nms: blend each kept box with the boxes it suppresses (score-weighted
            average, BlazeFace's "blending" NMS) instead of plain NMS.
    """

    num_classes: int
    strides: tuple[int, ...] = ()
    # static int8 export: keep the output convs float (``export.quantize_keep_final_float``
    # null). Heads whose one conv mixes box offsets with logits need it (YOLOv3).
    int8_keep_final_float: bool = False

    def __init__(
        self,
        num_classes: int,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        max_detections: int = 100,
        pre_nms_topk: int = 1000,
        weighted_nms: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.max_detections = int(max_detections)
        self.pre_nms_topk = int(pre_nms_topk)
        self.weighted_nms = bool(weighted_nms)

    def forward(
        self, images: torch.Tensor, targets: Sequence[Target] | None = None
    ) -> dict[str, torch.Tensor] | list[Detection]:
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__} in training mode needs targets")
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
            return self.losses(images, targets)
        boxes, scores = self.forward_raw(images)
        return self.postprocess(boxes, scores)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded boxes (B, A, 4) xyxy input pixels and class probabilities (B, A, C)."""
        raise NotImplementedError

    def losses(self, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        """Training losses, each a scalar; their sum is what gets optimised."""
        raise NotImplementedError

    def postprocess(self, boxes: torch.Tensor, scores: torch.Tensor) -> list[Detection]:
        """Per image: threshold, top-k, class-wise (or weighted) NMS, keep max_detections."""
        return [
            multiclass_nms(
                b,
                s,
                self.score_thresh,
                self.nms_thresh,
                self.max_detections,
                self.pre_nms_topk,
                self.weighted_nms,
            )
            for b, s in zip(boxes, scores, strict=True)
        ]


def multiclass_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_thresh: float,
    nms_thresh: float,
    max_detections: int,
    pre_nms_topk: int = 1000,
    weighted: bool = False,
) -> Detection:
    """Class-wise NMS for one image: ``boxes`` (A, 4) shared by the classes of ``scores`` (A, C).

    Every (box, class) pair above ``score_thresh`` is a candidate, so one box may be kept
    under two labels (the YOLOv3/PaddleDetection ``MultiClassNMS`` convention).
    """
    anchor, label = torch.nonzero(scores > score_thresh, as_tuple=True)
    cand_scores = scores[anchor, label]
    if cand_scores.numel() > pre_nms_topk:
        cand_scores, order = cand_scores.topk(pre_nms_topk)
        anchor, label = anchor[order], label[order]
    cand_boxes = boxes[anchor].float()
    cand_scores = cand_scores.float()
    if weighted:
        out_boxes, out_scores, out_labels = weighted_nms(cand_boxes, cand_scores, label, nms_thresh)
    else:
        keep = batched_nms(cand_boxes, cand_scores, label, nms_thresh)
        out_boxes, out_scores, out_labels = cand_boxes[keep], cand_scores[keep], label[keep]
    return {
        "boxes": out_boxes[:max_detections],
        "scores": out_scores[:max_detections],
        "labels": out_labels[:max_detections].long(),
    }


def weighted_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blending NMS (BlazeFace, MediaPipe ``WEIGHTED``): per class, the best box absorbs every
    box overlapping it by more than ``iou_thresh`` and becomes their score-weighted average,
    keeping the best score. Returns boxes, scores, labels sorted by score.
    """
    out_boxes, out_scores, out_labels = [], [], []
    for cls in labels.unique():
        idx = torch.nonzero(labels == cls).squeeze(1)
        b, s = boxes[idx], scores[idx]
        order = s.argsort(descending=True)
        b, s = b[order], s[order]
        iou = box_iou(b, b)  # (n, n)
        alive = torch.ones(len(s), dtype=torch.bool, device=s.device)
        for i in range(len(s)):  # data-dependent: post-processing only, never exported
            if not alive[i]:
                continue
            group = alive & (iou[i] > iou_thresh)
            group[i] = True
            w = s[group]
            out_boxes.append((b[group] * w[:, None]).sum(0) / w.sum())
            out_scores.append(s[i])
            out_labels.append(cls)
            alive &= ~group
    if not out_scores:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), labels.new_zeros((0,))
    scores_t = torch.stack(out_scores)
    order = scores_t.argsort(descending=True)
    return torch.stack(out_boxes)[order], scores_t[order], torch.stack(out_labels)[order]


def clip_boxes(boxes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Clip xyxy ``boxes`` (B, A, 4) to the image; the size stays dynamic in ONNX."""
    size = torch._shape_as_tensor(images)[-2:].flip(0).repeat(2).to(boxes)  # (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), size)


def build_backbone(
    spec: dict[str, Any] | None, default: dict[str, Any], strides: Sequence[int]
) -> tuple[nn.Module, list[int]]:
    """Build a ``BACKBONES`` spec and find which of its maps are at ``strides``.

    A spec without ``type`` only overrides arguments of the default backbone. Any backbone
    exposing ``out_channels`` and ``strides`` works: det's by name, others (seg's too) by
    dotted path, e.g. ``e2ekit.seg.backbones.resnet:resnet_tiny``; the detector takes the
    maps at the strides it needs. Returns the backbone and the indices of those maps.
    """
    merged = dict(default) if spec is None else spec if "type" in spec else {**default, **spec}
    backbone = BACKBONES.build(merged)
    have = list(getattr(backbone, "strides", []))
    if not isinstance(getattr(backbone, "out_channels", None), (list, tuple)):
        raise ConfigError(f"backbone '{merged['type']}' must expose 'out_channels'")
    missing = [s for s in strides if s not in have]
    if missing:
        raise ConfigError(
            f"backbone '{merged['type']}' has feature strides {have}; the detector needs "
            f"{list(strides)} (missing {missing})"
        )
    return backbone, [have.index(s) for s in strides]
