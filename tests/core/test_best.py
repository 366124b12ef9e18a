"""Best-checkpoint bookkeeping shared by the core Trainer and the ctr trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from e2ekit.core.engine.best import (
    best_record,
    defined,
    is_better,
    require_metric,
    write_final_metrics,
)
from e2ekit.core.errors import ConfigError


def test_require_metric_names_the_choices() -> None:
    require_metric("mAP", {"mAP": 0.5})
    with pytest.raises(ConfigError, match=r"train.metric 'map' .* choose one of AP50, mAP"):
        require_metric("map", {"mAP": 0.5, "AP50": 0.7, "per_class_ap": {}})


def test_is_better_modes_and_delta() -> None:
    assert is_better(None, 0.1, "max")
    best = best_record("auc", 0.80, 10, {"auc": 0.80})
    assert is_better(best, 0.81, "max") and not is_better(best, 0.80, "max")
    assert not is_better(best, 0.805, "max", min_delta=0.01)
    assert is_better(best, 0.79, "min") and not is_better(best, 0.81, "min")
    undefined = best_record("auc", None, 5, {"auc": None})
    assert is_better(undefined, 0.5, "max")  # any defined value beats an undefined best
    assert not defined(None) and not defined(math.nan) and defined(0.0)


def test_write_final_metrics(tmp_path: Path) -> None:
    best = best_record("auc", 0.9, 7, {"auc": 0.9, "calibration_bins": [1, 2]})
    summary = write_final_metrics(tmp_path, best, 12, summary_drop=("calibration_bins",))
    assert summary == {"auc": 0.9, "step": 7, "best_metric": "auc"}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == {**summary, "calibration_bins": [1, 2]}
    assert not (tmp_path / "metrics.json.tmp").exists()
    assert write_final_metrics(tmp_path, None, 3) == {"step": 3}
