"""The student's loss: match the teacher's soft labels, plus cross-entropy on real labels.

Augmented rows have only the teacher's labels (their hard label is -100), so the hard term
averages over the labelled rows of a batch and is 0 when there are none; the weights stay
the same on every batch, so an all-augmented batch counts just like any other.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

SOFT_LOSSES = ("kl", "mse")
IGNORE = -100


def _check_args(temperature: float, soft_weight: float, soft: str) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= soft_weight <= 1.0:
        raise ValueError(f"soft_weight must be in [0, 1], got {soft_weight}")
    if soft not in SOFT_LOSSES:
        raise ValueError(f"soft must be one of {', '.join(SOFT_LOSSES)}, got {soft!r}")


def soft_loss(student: Tensor, teacher: Tensor, *, temperature: float, soft: str) -> Tensor:
    """'kl': T^2 * KL(teacher_T || student_T), batch mean (Hinton et al.: T^2 keeps the
    gradient scale independent of T); 'mse': squared error of the logits (Tang et al.)."""
    if soft == "mse":
        return F.mse_loss(student, teacher)
    t = float(temperature)
    log_s = F.log_softmax(student / t, dim=-1)
    log_t = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def hard_loss(student: Tensor, labels: Tensor | None) -> Tensor:
    """Cross-entropy over the rows whose label is not -100; 0 when no row has one.

    Summed and divided by the labelled count (at least 1) rather than branching on it, so
    it needs no device sync.
    """
    if labels is None:
        return student.sum() * 0.0
    labels = labels.long()
    total = F.cross_entropy(student, labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().clamp(min=1)
    return total / count


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    *,
    temperature: float = 2.0,
    soft_weight: float = 0.5,
    soft: str = "kl",
) -> Tensor:
    """``soft_weight * soft + (1 - soft_weight) * hard`` as a scalar.

    ``soft_weight=0`` is plain cross-entropy (the labels-alone baseline; ``teacher_logits``
    may then be None); a term whose weight is 0 is not computed.
    """
    _check_args(temperature, soft_weight, soft)
    student = student_logits.float()
    if student.dim() != 2:
        raise ValueError(f"student_logits must be [batch, labels], got {list(student.shape)}")
    if labels is not None and labels.shape != student.shape[:1]:
        raise ValueError(f"labels must be [batch] = [{student.shape[0]}], got {list(labels.shape)}")
    loss = student.new_zeros(())
    if soft_weight > 0:
        if teacher_logits is None:
            raise ValueError("teacher_logits are required when soft_weight > 0")
        if teacher_logits.shape != student.shape:
            raise ValueError(
                f"teacher_logits {list(teacher_logits.shape)} and student_logits "
                f"{list(student.shape)} differ in shape"
            )
        teacher = teacher_logits.detach().float()
        loss = loss + soft_weight * soft_loss(student, teacher, temperature=temperature, soft=soft)
    if soft_weight < 1:
        loss = loss + (1.0 - soft_weight) * hard_loss(student, labels)
    return loss
