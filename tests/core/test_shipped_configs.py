"""Every shipped config loads and validates against its kit's schema (typos fail here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ekit.core.config import load_config
from e2ekit.core.kit import available_kits, get_kit

from ..conftest import ROOT

CONFIGS = sorted(p for kit in available_kits() for p in (ROOT / "configs" / kit).glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_validates(path: Path) -> None:
    kit = get_kit(path.parent.name)
    cfg = load_config(path, kit.schema, [])
    kit.make_task(cfg)  # task construction checks cross-field settings without data


def test_every_kit_ships_quick() -> None:
    for kit in available_kits():
        assert (ROOT / "configs" / kit / "quick.yaml").is_file(), kit
