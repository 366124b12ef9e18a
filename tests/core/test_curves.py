"""curves.png: drawn at the end of every run from the logged scalars and metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from e2ekit.core.engine.curves import write_curves


def test_a_run_folder_has_its_curves(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli("toy", "train", "-c", "tiny", "--out", out, "-o", "train.tensorboard=false")
    assert code == 0, err
    with Image.open(out / "curves.png") as im:
        assert (
            im.format == "PNG"
            and im.width > 600
            and len(im.convert("RGB").getcolors(1 << 16) or []) > 10
        )


def test_curves_skip_undefined_values_and_nothing_to_draw(tmp_path: Path) -> None:
    assert write_curves(tmp_path, [], [], "auc") is None
    scalars = [{"step": s, "loss": 1 / s, "lr": 0.1} for s in range(1, 20)]
    evals = [{"step": 5, "auc": math.nan}, {"step": 10, "auc": 0.7, "loss": 0.5}, {"step": 15}]
    path = write_curves(tmp_path, scalars, evals, "auc", mode="max")
    assert path == tmp_path / "curves.png" and path.stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))
