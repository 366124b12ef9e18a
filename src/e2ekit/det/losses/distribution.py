"""Distribution focal loss (Li et al., "Generalized Focal Loss", 2020) and the integral it
decodes: each box side is a distribution over ``0..reg_max`` bins, its value the expectation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distribution_focal_loss", "integral"]


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(..., 4 * (reg_max + 1)) logits -> (..., 4) expected distances in bins."""
    prob = logits.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    bins = torch.arange(reg_max + 1, dtype=prob.dtype, device=prob.device)
    return prob @ bins


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 4, reg_max + 1) logits, (N, 4) targets in [0, reg_max) -> (N,) loss, the mean over
    the four sides of the cross-entropy towards the two bins around each target, weighted by
    closeness (a target of 2.3 puts 0.7 on bin 2 and 0.3 on bin 3).
    """
    left = target.long()  # (N, 4)
    w_left = left.to(target.dtype) + 1 - target
    logp = F.log_softmax(logits, dim=-1)
    nll_left = -logp.gather(-1, left[..., None]).squeeze(-1)
    nll_right = -logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return (nll_left * w_left + nll_right * (1 - w_left)).mean(-1)
