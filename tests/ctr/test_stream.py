"""Streaming training: partitions arrive one by one, a crash mid-partition, exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from e2ekit.ctr.data.synthetic import write_synthetic_criteo
from e2ekit.ctr.engine.stream import find_partitions

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "ctr" / "tiny.yaml")
PARTS = ["20261101/00", "20261101/01", "20261101/02", "20261101/03"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    src = tmp_path / "staged"
    write_synthetic_criteo(src, rows=4 * 900, seed=5, partitions=PARTS)
    return src


def publish(staged: Path, stream: Path, part: str, done: bool = True) -> None:
    dst = stream / part
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(staged / part / "part-0.tsv", dst / "part-0.tsv")
    if done:
        (dst / "_SUCCESS").touch()


def test_find_partitions_orders_and_marks_done(tmp_path: Path) -> None:
    (tmp_path / "20261102" / "00").mkdir(parents=True)
    (tmp_path / "20261101" / "23").mkdir(parents=True)
    (tmp_path / "20261101" / "23" / "_SUCCESS").touch()
    (tmp_path / "notes").mkdir()
    found = find_partitions(tmp_path)
    assert [(p.name, p.done) for p in found] == [("20261101/23", True), ("20261102/00", False)]


def test_partitions_one_by_one_with_a_crash(cli, staged: Path, tmp_path: Path) -> None:
    stream, run = tmp_path / "stream", tmp_path / "run"
    publish(staged, stream, PARTS[0])
    publish(staged, stream, PARTS[1], done=False)  # data there, donefile not yet
    code, out, err = cli("ctr", "train", "-c", TINY, "--stream", stream, "--out", run)
    assert code == 0, err
    assert last_json(out)["partitions_trained"] == 1
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["stream"]["trained"] == [PARTS[0]]
    assert (run / "checkpoints" / "20261101-00.pt").is_file()
    manifest = json.loads(
        (run / "exports" / "20261101-00" / "sparse" / "manifest.json").read_text()
    )
    assert [e["name"] for e in manifest["versions"]] == [f"step-{first['step']}-20261101-00"]

    # p1 completes; p2 arrives with a corrupt row; the strict run dies inside p2
    (stream / PARTS[1] / "_SUCCESS").touch()
    publish(staged, stream, PARTS[2])
    data = stream / PARTS[2] / "part-0.tsv"
    good = data.read_text()
    lines = good.splitlines()
    lines[700] = "7\t" + lines[700].split("\t", 1)[1]
    data.write_text("\n".join(lines) + "\n")
    code, out, err = cli(
        "ctr", "train", "--resume", run, "--stream", stream, "-o", "data.max_bad_rows=0"
    )
    assert code == 1 and f"{data}:701" in err
    crashed = torch.load(run / "last.pt", weights_only=False)
    assert crashed["stream"]["trained"] == PARTS[:2]  # the cut-short partition is not recorded
    assert crashed["step"] > first["step"]

    # the file is fixed, one more partition lands; resume trains exactly the missing ones
    data.write_text(good)
    publish(staged, stream, PARTS[3])
    code, out, err = cli("ctr", "train", "--resume", run, "--stream", stream)
    assert code == 0, err
    summary = last_json(out)
    assert summary["partitions_trained"] == 2 and summary["partitions_total"] == 4
    final = torch.load(run / "last.pt", weights_only=False)
    history = final["stream"]["history"]
    assert [h["partition"] for h in history] == PARTS  # each exactly once, in order
    assert all(h["rows"] == 900 for h in history)
    assert final["rows_seen"] == 4 * 900
    steps = [h["step"] for h in history]
    assert steps == sorted(steps) and len(set(steps)) == 4  # checkpoints advance
    assert history[0].get("progressive_auc") is None  # nothing to score with yet
    assert all(0.0 <= h["progressive_auc"] <= 1.0 for h in history[1:])
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["20261101-01.pt", "20261101-02.pt", "20261101-03.pt"]  # keep_checkpoints 3
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["partition"] for r in records] == PARTS

    # nothing new: a second call trains nothing and changes nothing
    code, out, err = cli("ctr", "train", "--resume", run, "--stream", stream)
    assert code == 0 and last_json(out)["partitions_trained"] == 0


def test_start_from_an_earlier_model_and_evict(cli, staged: Path, tmp_path: Path) -> None:
    stream = tmp_path / "stream"
    for part in PARTS[:2]:
        publish(staged, stream, part)
    base = tmp_path / "base"
    code, _, err = cli("ctr", "train", "-c", TINY, "--stream", stream, "--out", base)
    assert code == 0, err
    publish(staged, stream, PARTS[2])
    code, _out, err = cli(
        "ctr", "train", "-c", TINY, "--weights", base / "last.pt", "--stream", stream,
        "-o", "stream.evict_after=1", "-o", "stream.export_each=false", "--out", tmp_path / "b",
    )  # fmt: skip
    assert code == 0, err
    history = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["stream"]["history"]
    # a fresh run dir trains every partition, but starts from the base model's weights:
    assert history[0]["progressive_auc"] is not None
    assert history[-1]["evicted_rows"] >= 0
    assert not (tmp_path / "b" / "exports").exists()
