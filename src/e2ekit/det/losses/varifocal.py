"""Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["varifocal_loss"]


def varifocal_loss(
    pred_logits: torch.Tensor,
    target_scores: torch.Tensor,
    labels_one_hot: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Summed BCE towards soft ``target_scores`` (IoU-aware quality of each positive class).

    Positives (``labels_one_hot`` 1) weigh by their target, negatives by ``alpha * p ** gamma``
    (focal down-weighting of easy negatives only). Shapes (..., C); returns a scalar sum.
    """
    prob = pred_logits.sigmoid()
    weight = alpha * prob.pow(gamma) * (1 - labels_one_hot) + target_scores * labels_one_hot
    bce = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="none")
    return (bce * weight).sum()
