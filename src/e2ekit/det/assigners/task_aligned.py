"""Task-aligned assigner (Feng et al., "TOOD: Task-aligned One-stage Object Detection", 2021),
as PP-YOLOE trains with it.

For each gt box, every anchor point inside it gets the alignment metric
``t = s ** alpha * u ** beta``: ``s`` the predicted score of the gt's class, ``u`` the IoU of
the predicted box with the gt. The ``topk`` anchors inside the box with the largest ``t`` are
its positives; an anchor claimed by several gts keeps the one its prediction overlaps most.
The classification target of a positive is ``t`` rescaled per gt so that the gt's best
anchor gets the gt's largest IoU over its positives: ``t / max_t(gt) * max_u(gt)`` (0 for
negatives).
"""

from __future__ import annotations

import torch

from e2ekit.det.assigners.anchor_ops import (
    batched_box_iou,
    gather_assignment,
    points_in_boxes,
    resolve_multiple_gts,
    topk_mask,
)

__all__ = ["alignment_metric", "task_aligned_assign"]


def alignment_metric(
    scores: torch.Tensor, ious: torch.Tensor, alpha: float = 1.0, beta: float = 6.0
) -> torch.Tensor:
    """``scores ** alpha * ious ** beta``, TOOD's anchor-quality measure."""
    return scores.pow(alpha) * ious.pow(beta)


@torch.no_grad()
def task_aligned_assign(
    pred_scores: torch.Tensor,
    pred_boxes: torch.Tensor,
    anchor_points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    num_classes: int,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign gts to anchor points by the task-alignment metric (see the module docstring).

    Args:
        pred_scores: (B, L, C) class probabilities.
        pred_boxes: (B, L, 4) decoded xyxy boxes, in the units of ``gt_boxes``.
        anchor_points: (L, 2) anchor centres, same units.
        gt_labels: (B, n) int64 classes of the gts, padded to n per image.
        gt_boxes: (B, n, 4) xyxy.
        gt_mask: (B, n) bool, False on padding rows.
        num_classes: C; the background label.

    Returns:
        labels (B, L) int64 (``num_classes`` for background), boxes (B, L, 4), scores
        (B, L, C): the soft class targets, and the positive mask (B, L).
    """
    batch, num_anchors, _ = pred_scores.shape
    if gt_boxes.shape[1] == 0:
        labels = gt_labels.new_full((batch, num_anchors), num_classes)
        return (
            labels,
            pred_boxes.new_zeros((batch, num_anchors, 4)),
            pred_scores.new_zeros(pred_scores.shape),
            labels < num_classes,
        )
    ious = batched_box_iou(gt_boxes, pred_boxes)  # (B, n, L)
    cls_scores = torch.gather(
        pred_scores.transpose(1, 2), 1, gt_labels[..., None].expand(-1, -1, num_anchors)
    )  # (B, n, L): each anchor's score for the gt's class
    metric = alignment_metric(cls_scores, ious, alpha, beta)
    inside = points_in_boxes(anchor_points, gt_boxes)  # (B, n, L)
    mask = topk_mask(metric * inside, topk) & inside & gt_mask[..., None]
    mask = resolve_multiple_gts(mask, ious)
    labels, boxes, scores, positive = gather_assignment(mask, gt_labels, gt_boxes, num_classes)
    metric = metric * mask
    max_metric = metric.amax(-1, keepdim=True)  # (B, n, 1)
    max_iou = (ious * mask).amax(-1, keepdim=True)
    norm = (metric / (max_metric + eps) * max_iou).amax(1)  # (B, L)
    return labels, boxes, scores * norm[..., None], positive
