"""Tensor operations the label assigners share: which anchors lie in which box, top-k masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

__all__ = [
    "batched_box_iou",
    "gather_assignment",
    "max_iou_mask",
    "points_in_boxes",
    "resolve_multiple_gts",
    "topk_mask",
]


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(L, 2) points, (B, n, 4) xyxy boxes -> (B, n, L) bool: point strictly inside the box."""
    x, y = points[:, 0], points[:, 1]  # (L,)
    x1, y1, x2, y2 = (boxes[..., i : i + 1] for i in range(4))  # (B, n, 1)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # (B, n, L, 4)
    return ltrb.amin(-1) > eps


def topk_mask(metric: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """(..., L) -> (..., L) bool marking the ``k`` best entries along the last axis."""
    k = min(k, metric.shape[-1])
    idx = metric.topk(k, dim=-1, largest=largest).indices  # (..., k)
    return torch.zeros_like(metric, dtype=torch.bool).scatter_(-1, idx, True)


def max_iou_mask(ious: torch.Tensor) -> torch.Tensor:
    """(B, n, L) -> (B, n, L) bool: for each anchor, the gt it overlaps most."""
    best = ious.argmax(dim=1)  # (B, L)
    return F.one_hot(best, ious.shape[1]).permute(0, 2, 1).bool()


def resolve_multiple_gts(mask: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """(B, n, L) masks: an anchor positive for several gts keeps only its highest-IoU gt."""
    multiple = mask.sum(1, keepdim=True) > 1  # (B, 1, L)
    return torch.where(multiple, max_iou_mask(ious), mask)


def batched_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(B, n, 4), (B, L, 4) or (L, 4) xyxy -> (B, n, L) IoU."""
    if boxes2.dim() == 2:
        boxes2 = boxes2.expand(boxes1.shape[0], -1, -1)
    return torch.stack([box_iou(a, b) for a, b in zip(boxes1, boxes2, strict=True)])


def gather_assignment(
    mask: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor, the gt its (B, n, L) positive ``mask`` names.

    Returns labels (B, L) int64 (``num_classes`` = background), boxes (B, L, 4), one-hot
    scores (B, L, C) and the positive mask (B, L).
    """
    positive = mask.any(1)  # (B, L)
    index = mask.to(torch.uint8).argmax(1)  # (B, L)
    labels = torch.gather(gt_labels, 1, index)
    labels = torch.where(positive, labels, torch.full_like(labels, num_classes))
    boxes = torch.gather(gt_boxes, 1, index[..., None].expand(-1, -1, 4))
    scores = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(gt_boxes.dtype)
    return labels, boxes, scores, positive
