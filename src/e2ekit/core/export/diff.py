"""Numeric differences between two runs of one model (torch vs ONNX, fp32 vs int8).

Shared by every check the export writes to its report, so all of them treat NaN, inf and
near-zero references the same way.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def finite_or_none(x: float) -> float | None:
    """JSON has no inf/nan; a non-finite diff is recorded as null (and always fails)."""
    return float(x) if math.isfinite(x) else None


def diff_stats(ref: np.ndarray, got: np.ndarray, rel_floor: float) -> tuple[float, float, float]:
    """(max abs, max rel, mean abs) difference; NaN/inf only match the same NaN/inf.

    The relative diff divides by ``max(|ref|, rel_floor)`` so near-zero reference values do
    not produce meaningless huge ratios.
    """
    if ref.size == 0:
        return 0.0, 0.0, 0.0
    a = ref.astype(np.float64, copy=False)
    b = got.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a - b)
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    rel = d / np.maximum(np.abs(a), rel_floor)
    rel[same] = 0.0
    return float(d.max()), float(rel.max()), float(d.mean())
