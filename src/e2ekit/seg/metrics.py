"""Segmentation metrics from one confusion matrix accumulated on the device.

``ConfusionMatrix.update`` adds a batch with a single ``torch.bincount`` (int64, no
Python loops, no host copy); ``compute`` derives mIoU, pixel accuracy, Cohen's kappa,
mean dice and per-class values on the host once at the end. Distributed evaluation
sums the matrices of all ranks (``all_reduce``), so the result equals a single-process
pass over the whole split.

mIoU / mDice rule: the mean runs over the classes that occur in the label or in the
prediction (union > 0); a class absent from both has no defined IoU, is reported as
NaN in ``per_class_iou`` and is left out of the mean (as mmsegmentation's nanmean).
PaddleSeg instead counts such classes as IoU 0 in the mean over all classes; that
number is also reported as ``mIoU_all`` for comparison with PaddleSeg logs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from e2ekit.core.errors import DataError
from e2ekit.seg.registry import METRICS

__all__ = ["ConfusionMatrix", "confusion_matrix"]


class ConfusionMatrix:
    """(K, K) int64 counts: rows are label classes, columns predicted classes."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mat = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=self.device
        )

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, label: Tensor) -> None:
        """Add a batch: ``pred`` (B,H,W) class ids, or (B,K,H,W) logits (argmax over K);
        ``label`` (B,H,W) with ``ignore_index`` for ignored pixels."""
        if pred.dim() == label.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != label.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} does not match label {tuple(label.shape)}"
            )
        k = self.num_classes
        pred = pred.to(self.mat.device, torch.int64).flatten()
        label = label.to(self.mat.device, torch.int64).flatten()
        valid = label != self.ignore_index
        in_range = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
        # bins 0..K*K-1 hold (label, pred) pairs; K*K counts ignored pixels, K*K+1 bad values
        idx = torch.where(in_range, label * k + pred, k * k + 1)
        idx = torch.where(valid, idx, k * k)
        counts = torch.bincount(idx, minlength=k * k + 2)
        bad = int(counts[k * k + 1])
        if bad:
            raise DataError(
                f"{bad} pixels have a label or prediction outside 0..{k - 1} that is not "
                f"ignore_index {self.ignore_index}; check num_classes and the label files"
            )
        self.mat += counts[: k * k].view(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another shard); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge confusion matrices of {other.num_classes} and "
                f"{self.num_classes} classes"
            )
        self.mat += other.mat.to(self.mat.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrices of every rank in place (no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics of the counts so far (see the module docstring for the mean rule)."""
        mat = self.mat.detach().to("cpu", torch.float64)
        tp = mat.diag()
        label_px = mat.sum(1)  # pixels of each class in the label
        pred_px = mat.sum(0)  # pixels predicted as each class
        total = float(mat.sum())
        union = label_px + pred_px - tp
        present = union > 0
        nan = torch.full_like(tp, math.nan)

        iou = torch.where(present, tp / union.clamp_min(1), nan)
        dice = torch.where(present, 2 * tp / (label_px + pred_px).clamp_min(1), nan)
        recall = torch.where(label_px > 0, tp / label_px.clamp_min(1), nan)
        precision = torch.where(pred_px > 0, tp / pred_px.clamp_min(1), nan)
        n_present = int(present.sum())

        if total > 0:
            acc = float(tp.sum()) / total
            pe = float((label_px * pred_px).sum()) / (total * total)
            kappa = (acc - pe) / (1.0 - pe) if pe < 1.0 else 1.0
        else:
            acc = kappa = 0.0
        return {
            "mIoU": float(iou[present].mean()) if n_present else 0.0,
            "mIoU_all": float(torch.where(present, iou, 0.0).mean()),
            "acc": acc,
            "kappa": kappa,
            "dice": float(dice[present].mean()) if n_present else 0.0,
            "per_class_iou": iou.tolist(),
            "per_class_acc": recall.tolist(),
            "per_class_precision": precision.tolist(),
            "per_class_dice": dice.tolist(),
            "class_pixels": [int(v) for v in label_px.tolist()],
        }


@METRICS.register("confusion_matrix")
def confusion_matrix(
    num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
) -> ConfusionMatrix:
    return ConfusionMatrix(num_classes, ignore_index, device)
