"""Best-checkpoint bookkeeping shared by the core Trainer and kits with their own loop (ctr).

Why one place: ``best.pt`` and ``metrics.json`` are part of the run-folder contract, so every
trainer must pick the best evaluation and write the final metrics the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from e2ekit.core.engine.checkpoint import write_failure
from e2ekit.core.errors import CheckpointError, ConfigError
from e2ekit.core.logs import jsonable

__all__ = ["best_record", "defined", "is_better", "require_metric", "write_final_metrics"]


def require_metric(name: str, metrics: dict[str, Any], source: str = "evaluation") -> None:
    """A typo in ``train.metric`` must fail loudly, not silently keep no ``best.pt``."""
    if name not in metrics:
        valid = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise ConfigError(
            f"train.metric '{name}' is not reported by {source}; choose one of {', '.join(valid)}"
        )


def defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def is_better(best: dict[str, Any] | None, value: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether a defined ``value`` beats ``best`` (a :func:`best_record`) by ``min_delta``."""
    if best is None or best.get("value") is None:
        return True
    if mode == "max":
        return value > best["value"] + min_delta
    return value < best["value"] - min_delta


def best_record(metric: str, value: float | None, step: int, metrics: dict) -> dict[str, Any]:
    """What ``best.pt``/``last.pt`` keep under ``best`` and ``metrics.json`` reports."""
    return {
        "metric": metric,
        "value": None if value is None else float(value),
        "step": step,
        "metrics": jsonable(metrics),
    }


def write_final_metrics(
    out_dir: Path, best: dict[str, Any] | None, step: int, summary_drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Write ``metrics.json`` atomically (the best evaluation + ``step``, ``best_metric``, or
    just ``step`` without one) and return it without ``summary_drop`` keys (bulky details
    kept in the file but left out of the CLI's one-line summary)."""
    if best is not None:
        full = dict(best["metrics"])
        full.update(step=best["step"], best_metric=best["metric"])
    else:
        full = {"step": step}
    path = out_dir / "metrics.json"
    tmp = out_dir / "metrics.json.tmp"
    try:
        tmp.write_text(json.dumps(jsonable(full), indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
    except BaseException as exc:  # a full disk: no partial file, one line naming the file
        tmp.unlink(missing_ok=True)
        why = write_failure(exc)
        if why:
            raise CheckpointError(f"{why}: {path}") from None
        raise
    return {k: v for k, v in full.items() if k not in summary_drop}
