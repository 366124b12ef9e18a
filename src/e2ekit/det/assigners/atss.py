"""ATSS assigner (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", 2020): PP-YOLOE's static assigner for its
first epochs, while predictions are still too poor for the task-aligned one.

Each anchor is a square of ``grid_cell_scale * stride`` around its cell centre. For every gt,
the ``topk`` anchors per level whose centres are closest to the gt's centre are candidates;
those whose IoU with the gt exceeds the candidates' mean + standard deviation, and whose
centre lies inside the gt, are positives. An anchor claimed by several gts keeps the one it
overlaps most. With ``pred_boxes`` the class target is the IoU of the positive's predicted
box with its gt (a varifocal target); otherwise 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from e2ekit.det.assigners.anchor_ops import (
    batched_box_iou,
    gather_assignment,
    points_in_boxes,
    resolve_multiple_gts,
    topk_mask,
)

__all__ = ["atss_assign"]


@torch.no_grad()
def atss_assign(
    anchors: torch.Tensor,
    num_anchors_list: Sequence[int],
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    num_classes: int,
    topk: int = 9,
    pred_boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign gts to anchors by ATSS (see the module docstring).

    Args:
        anchors: (L, 4) xyxy anchor boxes, levels concatenated in ``num_anchors_list`` order.
        num_anchors_list: anchors per level.
        gt_labels: (B, n) int64, padded; gt_boxes: (B, n, 4) xyxy; gt_mask: (B, n) bool.
        num_classes: C; the background label.
        pred_boxes: (B, L, 4) predicted boxes: when given, positives' targets are their IoU.

    Returns:
        labels (B, L), boxes (B, L, 4), scores (B, L, C) and the positive mask (B, L).
    """
    batch, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    if gt_boxes.shape[1] == 0:
        labels = gt_labels.new_full((batch, num_anchors), num_classes)
        return (
            labels,
            anchors.new_zeros((batch, num_anchors, 4)),
            anchors.new_zeros((batch, num_anchors, num_classes)),
            labels < num_classes,
        )
    ious = batched_box_iou(gt_boxes, anchors)  # (B, n, L)
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, n, 2)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (L, 2)
    dist = (gt_centres[:, :, None, :] - centres[None, None]).norm(dim=-1)  # (B, n, L)
    candidate = torch.cat(
        [topk_mask(d, topk, largest=False) for d in dist.split(list(num_anchors_list), dim=-1)],
        dim=-1,
    )
    count = candidate.sum(-1, keepdim=True).clamp(min=2)
    cand_ious = ious * candidate
    mean = cand_ious.sum(-1, keepdim=True) / count
    var = (((ious - mean) * candidate) ** 2).sum(-1, keepdim=True) / (count - 1)
    threshold = mean + var.sqrt()  # (B, n, 1)
    mask = candidate & (cand_ious > threshold)
    mask = mask & points_in_boxes(centres, gt_boxes) & gt_mask[..., None]
    mask = resolve_multiple_gts(mask, ious)
    labels, boxes, scores, positive = gather_assignment(mask, gt_labels, gt_boxes, num_classes)
    if pred_boxes is not None:
        pred_ious = (batched_box_iou(gt_boxes, pred_boxes) * mask).amax(1)  # (B, L)
        scores = scores * pred_ious[..., None]
    return labels, boxes, scores, positive
