"""Evaluation pictures shared by the kits: a confusion matrix, per-class bars, PR curves.

Kits compute the numbers (a pixel or box confusion matrix, per-class IoU or AP, COCO's
precision at each recall); these functions only draw them, the same way for every kit,
into PNG files written whole or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bars_png", "confusion_png", "pr_curves_png", "pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written whole or not at all, then closed."""
    plt = pyplot()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def confusion_png(
    matrix: np.ndarray, names: Sequence[str], path: Path, title: str, true_axis: str = "rows"
) -> Path:
    """``matrix[t, p]`` counts (true class t, predicted p), drawn row-normalised (each true
    class's share per prediction) with the counts' shares written in the cells that fit."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    share = m / np.clip(m.sum(1, keepdims=True), 1, None)
    n = len(names)
    side = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for t in range(n):
            for p in range(n):
                if share[t, p] >= 0.005:
                    colour = "white" if share[t, p] > 0.6 else "black"
                    ax.text(p, t, f"{share[t, p]:.2f}", ha="center", va="center",
                            fontsize=7, color=colour)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def bars_png(values: Mapping[str, float | None], path: Path, title: str, xlabel: str) -> Path:
    """One horizontal bar per class (None: no ground truth, drawn as an empty row), the
    mean of the defined values as a dashed line."""
    plt = pyplot()
    names = list(values)
    vals = [v if v is not None and np.isfinite(v) else np.nan for v in values.values()]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(names) + 1)))
    ax.barh(range(len(names)), np.nan_to_num(vals), color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        ax.text(0.01 if np.isnan(v) else v + 0.01, i, "n/a" if np.isnan(v) else f"{v:.3f}",
                va="center", fontsize=7)  # fmt: skip
    defined = [v for v in vals if not np.isnan(v)]
    if defined:
        ax.axvline(float(np.mean(defined)), ls="--", color="black", lw=1, label="mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def pr_curves_png(
    recall: np.ndarray, precision: Mapping[str, np.ndarray], path: Path, title: str
) -> Path:
    """Precision at each ``recall`` point per class (COCO's interpolated curve; negative
    entries, for classes without ground truth, are left out) and their mean, bold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    curves = []
    for name, p in precision.items():
        p = np.asarray(p, dtype=np.float64)
        if (p < 0).all():
            continue
        p = np.where(p < 0, 0.0, p)
        curves.append(p)
        ax.plot(recall, p, lw=1, alpha=0.7, label=f"{name} {p.mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, lw=3, color="black", label=f"all classes {mean.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=1 + len(curves) // 12)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
