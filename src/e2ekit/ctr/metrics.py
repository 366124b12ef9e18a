"""Exact CTR evaluation: ROC AUC, logloss, observed vs predicted CTR and calibration bins.

``CtrMetrics`` accumulates batches (numpy arrays or torch tensors) and computes everything
exactly at the end: it keeps every prediction compactly (float32 prob + uint8 label, 5 bytes
a row, appended in chunks), so AUC is the true Mann-Whitney statistic rather than a
histogram approximation. Tens of millions of rows cost a few hundred MB and one sort.
Logloss, CTRs and counts are running float64 sums, so they are exact too (logloss is taken
on the float64 probs as given, before the float32 storage). ``merge`` combines accumulators
of several eval workers; the result is the same as one accumulator fed every batch.

``calibration`` is predicted CTR / observed CTR (1.0 = calibrated, > 1 = over-predicts).
That is the inverse of the "COPC" (clicks over predicted clicks) some teams report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-7  # probs are clipped to [EPS, 1 - EPS] for logloss
N_BINS = 10
_COMPACT_EVERY = 256  # small chunks pending before they are concatenated into one


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (bf16/fp16 have no numpy view: go via float32)
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _run_bounds(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of every run of equal values in a sorted array."""
    return np.r_[0, np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1]


def _auc_sorted(sorted_scores: np.ndarray, sorted_pos: np.ndarray) -> float | None:
    """AUC from scores in ascending order and their positive flags; None for a single class.

    Per run of tied scores: each positive beats every negative in lower runs and half of the
    negatives in its own run. Integer counts throughout, one float division at the end.
    """
    n = sorted_scores.size
    if n == 0:
        return None
    starts = _run_bounds(sorted_scores)
    pos = np.add.reduceat(sorted_pos.astype(np.int64), starts)
    neg = np.diff(np.r_[starts, n]) - pos
    n_pos = int(pos.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    # 2 * U in integers: exact up to ~2^63, i.e. far beyond any eval set.
    twice_u = int((pos * (2 * neg_below + neg)).sum())
    return twice_u / (2.0 * n_pos * n_neg)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores).ravel()
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def roc_auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC with ties counted half (Mann-Whitney U); raises for a single class.

    Vectorised: one argsort, then positives and negatives counted per run of tied scores.
    Labels are truthy = positive. Accepts numpy arrays, lists or torch tensors.
    """
    y = _to_numpy(labels).ravel().astype(bool)
    s = _check_scores(_to_numpy(scores))
    if y.size != s.size:
        raise ValueError(f"{y.size} labels vs {s.size} scores")
    order = np.argsort(s)
    value = _auc_sorted(s[order], y[order])
    if value is None:
        raise ValueError("AUC needs both positive and negative labels")
    return value


class CtrMetrics:
    """Streaming, mergeable, exact CTR metrics. ``update`` per batch, ``compute`` at the end.

    ``compute()`` returns ``auc`` (None with one class or no rows), ``logloss`` (mean binary
    cross-entropy, probs clipped to [1e-7, 1 - 1e-7]), ``samples``, ``positives``,
    ``ctr_observed``, ``ctr_predicted`` (mean prob), ``calibration`` (ctr_predicted /
    ctr_observed, the inverse of COPC; None without positives) and ``calibration_bins``: up
    to 10 equal-frequency bins of predicted prob (rows sorted by prob and split into 10
    near-equal parts by position, so tied probs may straddle a boundary), each
    ``{"pred": mean prob, "obs": observed CTR, "n": rows}``, lowest probs first.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._pending = 0  # chunks appended since the last compaction
        self._samples = 0
        self._positives = 0
        self._sum_prob = 0.0
        self._sum_logloss = 0.0

    @property
    def samples(self) -> int:
        return self._samples

    def update(self, labels: Any, probs: Any) -> CtrMetrics:
        """Add one batch: 1-D labels in {0, 1} and click probabilities in [0, 1]."""
        y = _to_numpy(labels)
        p = _to_numpy(probs)
        if y.ndim > 1 and y.size == y.shape[0]:  # (n, 1) model outputs
            y = y.reshape(-1)
        if p.ndim > 1 and p.size == p.shape[0]:
            p = p.reshape(-1)
        if y.ndim != 1 or p.ndim != 1 or y.size != p.size:
            raise ValueError(f"labels {y.shape} and probs {p.shape} must be equal-length 1-D")
        if y.size == 0:
            return self
        p64 = p.astype(np.float64, copy=False)
        if np.isnan(p64).any() or p64.min() < 0.0 or p64.max() > 1.0:
            raise ValueError("probs must be within [0, 1] (apply the sigmoid to logits)")
        y8 = y.astype(np.uint8)
        if not np.array_equal(y8, y) or y8.max() > 1:
            raise ValueError("labels must be 0 or 1")
        clipped = np.clip(p64, EPS, 1.0 - EPS)
        positives = int(y8.sum())
        self._samples += y8.size
        self._positives += positives
        self._sum_prob += float(p64.sum())
        loss = -np.log(clipped[y8 == 1]).sum() - np.log1p(-clipped[y8 == 0]).sum()
        self._sum_logloss += float(loss)
        self._append(y8, p.astype(np.float32))
        return self

    def _append(self, y8: np.ndarray, p32: np.ndarray) -> None:
        self._labels.append(y8)
        self._probs.append(p32)
        self._pending += 1
        if self._pending >= _COMPACT_EVERY:  # keep per-chunk overhead flat for tiny batches
            k = self._pending
            self._labels[-k:] = [np.concatenate(self._labels[-k:])]
            self._probs[-k:] = [np.concatenate(self._probs[-k:])]
            self._pending = 0

    def merge(self, other: CtrMetrics) -> CtrMetrics:
        """Fold another accumulator (e.g. another eval worker's) into this one."""
        if other is self:
            raise ValueError("cannot merge an accumulator into itself")
        self._labels.extend(other._labels)  # stored chunks are never mutated: share them
        self._probs.extend(other._probs)
        self._pending = 0
        self._samples += other._samples
        self._positives += other._positives
        self._sum_prob += other._sum_prob
        self._sum_logloss += other._sum_logloss
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All (labels uint8, probs float32) seen so far, in update order."""
        if not self._labels:
            return np.zeros(0, np.uint8), np.zeros(0, np.float32)
        labels = np.concatenate(self._labels)
        probs = np.concatenate(self._probs)
        self._labels, self._probs, self._pending = [labels], [probs], 0
        return labels, probs

    def compute(self) -> dict[str, Any]:
        n = self._samples
        out: dict[str, Any] = {
            "auc": None,
            "logloss": None,
            "samples": n,
            "positives": self._positives,
            "ctr_observed": None,
            "ctr_predicted": None,
            "calibration": None,
            "calibration_bins": [],
        }
        if n == 0:
            return out
        labels, probs = self.arrays()
        order = np.argsort(probs, kind="stable")  # stable: bins independent of sort internals
        sorted_p = probs[order]
        sorted_y = labels[order]
        ctr_obs = self._positives / n
        ctr_pred = self._sum_prob / n
        out["auc"] = _auc_sorted(sorted_p, sorted_y)
        out["logloss"] = self._sum_logloss / n
        out["ctr_observed"] = ctr_obs
        out["ctr_predicted"] = ctr_pred
        out["calibration"] = ctr_pred / ctr_obs if self._positives else None
        out["calibration_bins"] = _bins(sorted_p, sorted_y, min(N_BINS, n))
        return out


def _bins(sorted_p: np.ndarray, sorted_y: np.ndarray, k: int) -> list[dict[str, Any]]:
    edges = np.arange(k + 1, dtype=np.int64) * sorted_p.size // k  # strictly increasing
    starts = edges[:-1]
    counts = np.diff(edges)
    sum_p = np.add.reduceat(sorted_p.astype(np.float64), starts)
    sum_y = np.add.reduceat(sorted_y.astype(np.int64), starts)
    return [
        {"pred": float(sp / c), "obs": float(sy / c), "n": int(c)}
        for sp, sy, c in zip(sum_p, sum_y, counts, strict=True)
    ]
