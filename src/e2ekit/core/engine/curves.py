"""``curves.png`` in every run folder: loss, learning rate and the evaluations over steps.

A user's first question after a run is whether it converged, overfitted or ran too short;
TensorBoard answers it but needs a server. The picture is drawn once, at the end of the
run, from the logged training scalars and ``metrics.jsonl`` (which spans a resumed run's
earlier evaluations too; the loss and rate panels cover this process's steps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CURVES_FILE", "read_evals", "write_curves"]

CURVES_FILE = "curves.png"
# evaluation keys that are bookkeeping, not quality
NOT_METRICS = {"step", "epoch", "eval_seconds", "detections", "best_metric"}


def read_evals(path: Path) -> list[dict[str, Any]]:
    """The evaluations of ``metrics.jsonl`` (a line torn by a kill is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(row.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def write_curves(
    out_dir: Path,
    scalars: Sequence[dict[str, Any]],
    evals: Sequence[dict[str, Any]],
    metric: str | None,
    mode: str = "max",
    title: str = "",
) -> Path | None:
    """Draw ``curves.png``: training loss, learning rate and ``metric`` (plus the other
    0-1 evaluation metrics, lighter) per step. ``scalars``: dicts with ``step``, ``loss``,
    ``lr``; ``mode``: whether the best ``metric`` is the ``max`` or ``min``. Returns the
    file, or None when there is nothing to draw."""
    if not scalars and not evals:
        return None
    from e2ekit.core.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_ax, lr_ax, metric_ax = axes
    steps, loss = _series(scalars, "loss")
    loss_ax.plot(steps, loss, lw=1, color="tab:blue", label="train")
    eval_steps, eval_loss = _series(evals, "loss")
    if eval_loss:
        loss_ax.plot(eval_steps, eval_loss, "o-", ms=3, color="tab:orange", label="val")
        loss_ax.legend(loc="upper right", fontsize=8)
    if loss and min(loss) > 0 and max(loss) / min(loss) > 30:
        loss_ax.set_yscale("log")
    loss_ax.set_title("loss")
    steps, lr = _series(scalars, "lr")
    lr_ax.plot(steps, lr, lw=1, color="tab:green")
    lr_ax.set_title("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _metrics_panel(metric_ax, evals, metric, mode)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_dir / CURVES_FILE)


def _metrics_panel(ax: Any, evals: Sequence[dict[str, Any]], metric: str | None, mode: str) -> None:
    """The selecting metric bold, with its best marked; other 0-1 metrics thin behind it."""
    others = sorted(
        {
            k
            for row in evals
            for k, v in row.items()
            if k not in NOT_METRICS and k != metric and k != "loss"
            and isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
        }
    )[:6]  # fmt: skip
    for key in others:
        steps, values = _series(evals, key)
        ax.plot(steps, values, lw=0.8, alpha=0.5, label=key)
    title = "evaluation"
    if metric:
        steps, values = _series(evals, metric)
        if values:
            ax.plot(steps, values, "o-", ms=3, lw=2, color="black", label=metric)
            pick = min if mode == "min" else max
            best = pick(range(len(values)), key=values.__getitem__)
            ax.annotate(
                f"{values[best]:.4g}", (steps[best], values[best]),
                textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8,
            )  # fmt: skip
            title = f"evaluation ({metric})"
    if ax.lines:
        ax.legend(loc="best", fontsize=7)
    ax.set_title(title)
