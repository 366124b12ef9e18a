"""Fixtures the core tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.cli import main

from ..conftest import ROOT

TOY_TINY = str(ROOT / "configs" / "toy" / "tiny.yaml")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-step toy run, its export (with torch weights) and a predict input."""
    root = tmp_path_factory.mktemp("toy")
    run, export = root / "run", root / "export"
    assert main(["toy", "train", "-c", TOY_TINY, "--out", str(run), "-o", "train.max_steps=2"]) == 0
    assert main(["toy", "export", "--weights", str(run), "--out", str(export)]) == 0
    rows = root / "rows.csv"
    np.savetxt(rows, np.random.default_rng(0).normal(size=(3, 16)), delimiter=",")
    return {"run": run, "export": export, "rows": rows}
