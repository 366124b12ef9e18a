"""`e2ekit demo` runs train -> eval -> export -> predict -> one HTTP request per kit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2ekit.core.demo import run_demo
from e2ekit.toy.kit import KIT


def test_demo_runs_every_step_and_prints_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(KIT, "demo_config", "tiny")
    earlier = tmp_path / "toy"  # a demo run from before: a new demo replaces it
    earlier.mkdir()
    (earlier / "config.yaml").write_text("seed: 1\n")
    (earlier / "metrics.jsonl").write_text('{"step": 99}\n')
    assert run_demo(["--out", str(tmp_path), "--kits", "toy"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"demo": "ok", "kits": ["toy"], "out": str(tmp_path)}
    header, row = out[-3].split(), out[-2].split()
    summary = dict(zip(header, row, strict=True))
    assert summary["kit"] == "toy" and summary["http"] == "ok"
    assert float(summary["onnx_diff"]) < 1e-4
    assert (tmp_path / "toy" / "export" / "model.onnx").is_file()
    assert len((tmp_path / "toy" / "predict" / "predictions.jsonl").read_text().splitlines()) == 32
    assert '"step": 99' not in (earlier / "metrics.jsonl").read_text()
