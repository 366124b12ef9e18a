"""Anchor sizes fitted to a dataset: k-means on box (w, h) with 1 - IoU as the distance.

Why: YOLO assigns each ground-truth box to its single best-matching anchor, so anchors made
for another dataset or input size (COCO's at 416/608 px) leave small or odd-shaped objects
with poor matches. PaddleDetection ships ``tools/anchor_cluster.py`` for this; here it is
``e2ekit det anchors``, which prints anchors to paste into ``model.anchors``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_anchors", "mean_best_iou", "wh_iou"]


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of (N, 2) box sizes against (K, 2) anchor sizes, both centred at one point."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """The average over boxes of the IoU with their best anchor (1.0 = perfect fit)."""
    return float(wh_iou(wh, anchors).max(1).mean())


def kmeans_anchors(
    wh: np.ndarray, k: int = 9, iters: int = 300, seed: int = 0, restarts: int = 5
) -> np.ndarray:
    """``k`` anchor sizes (K, 2) sorted by area, from box sizes ``wh`` (N, 2) in pixels.

    Lloyd's algorithm with the median as the centre (robust to the long tail of large
    boxes) from k-means++ starts; the best of ``restarts`` seeded starts by mean best IoU.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes with positive size to fit {k} anchors")
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centres = _plus_plus_init(wh, k, rng)
        for _ in range(iters):
            assign = wh_iou(wh, centres).argmax(1)
            new = np.array(
                [
                    np.median(wh[assign == i], 0) if (assign == i).any() else centres[i]
                    for i in range(k)
                ]
            )
            if np.allclose(new, centres):
                break
            centres = new
        fit = mean_best_iou(wh, centres)
        if fit > best_fit:
            best, best_fit = centres, fit
    assert best is not None
    return best[np.argsort(best[:, 0] * best[:, 1])]


def _plus_plus_init(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ (1 - best IoU)^2, so the
    starts spread over the size range instead of piling into the most common sizes."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        dist = 1.0 - wh_iou(wh, np.array(centres)).max(1)
        weight = dist**2
        total = weight.sum()
        pick = rng.integers(len(wh)) if total <= 0 else rng.choice(len(wh), p=weight / total)
        centres.append(wh[pick])
    return np.array(centres, dtype=np.float64)
