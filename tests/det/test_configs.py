"""Every shipped det config builds its detector: model keys are checked against the builder's
arguments only at build time, and a ``_base_`` can leak keys of another architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ekit.core.config import load_config
from e2ekit.det.config import DetConfig
from e2ekit.det.task import DetTask

from ..conftest import ROOT

CONFIGS = sorted((ROOT / "configs" / "det").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_det_config_builds_its_model(path: Path) -> None:
    cfg = load_config(path, DetConfig, [])
    det = DetTask(cfg).build_detector()  # full-size ones take ~1 s (random init, no download)
    assert det.num_classes >= 1
