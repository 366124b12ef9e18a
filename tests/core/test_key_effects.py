"""Keys whose effect shows only in a real run or export: each test sets them away from the
tiny config's values and checks what only those values produce.

``tests/core/test_schema_honesty.py`` names these tests as the evidence that the core loop
(every kit on the core Trainer), the ctr loop, the shared and the ctr export, and ctr
streaming honour the keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from e2ekit.core.cli import main
from e2ekit.core.config import load_config
from e2ekit.core.engine import Hook, Trainer
from e2ekit.ctr.config import CtrConfig
from e2ekit.toy.task import ToyConfig, ToyTask

from ..conftest import ROOT

TOY = ROOT / "configs" / "toy" / "tiny.yaml"
CTR = ROOT / "configs" / "ctr" / "tiny.yaml"
BAR = re.compile(r"train\S*:\s+\d+%\|")  # a tqdm progress bar of the train loop


class SaveLog(Hook):
    """Remembers (step, file name) of every checkpoint a loop writes."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, str]] = []

    def after_checkpoint(self, trainer: Any, path: str) -> None:
        self.saves.append((trainer.step, Path(path).name))


@contextlib.contextmanager
def as_the_cli() -> Iterator[io.StringIO]:
    """Progress bars (the suite turns them off) and INFO logs (train.log's step lines) as the
    CLI has them; yields what goes to stderr."""
    err = io.StringIO()
    logger = logging.getLogger("e2ekit")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
            mp.delenv("E2EKIT_NO_PROGRESS", raising=False)
            yield err
    finally:
        logger.setLevel(level)


def logged_steps(run: Path, pattern: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, (run / "train.log").read_text())]


def eval_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def last_saves(hook: SaveLog) -> list[int]:
    return [step for step, name in hook.saves if name == "last.pt"]


def toy_fit(out: Path, *overrides: str) -> tuple[SaveLog, str]:
    """Train the tiny toy config for 4 steps; the checkpoints written and the stderr."""
    cfg = load_config(TOY, ToyConfig, ["train.max_steps=4", *overrides])
    trainer = Trainer(ToyTask(cfg), out)
    hook = SaveLog()
    trainer.hooks.append(hook)
    with as_the_cli() as err:
        trainer.fit()
    return hook, err.getvalue()


def test_core_loop_keys(tmp_path: Path) -> None:
    """train.log_interval, eval_interval, save_interval, tensorboard and progress in the core
    Trainer (the tiny toy config: log_interval 2, one epoch = 8 steps, TensorBoard on)."""
    changed, plain = tmp_path / "changed", tmp_path / "plain"
    saves, err = toy_fit(
        changed,
        "train.log_interval=1",
        "train.eval_interval=2",
        "train.save_interval=3",
        "train.tensorboard=false",
        "train.progress=true",
    )
    plain_saves, plain_err = toy_fit(plain, "train.progress=false")
    step_line = r"step (\d+)/\d+ loss"
    assert logged_steps(changed, step_line) == [1, 2, 3, 4]
    assert logged_steps(plain, step_line) == [2, 4]
    assert eval_steps(changed) == [2, 4] and eval_steps(plain) == [4]
    assert last_saves(saves) == [2, 3, 4] and last_saves(plain_saves) == [4]
    assert not (changed / "tb").exists() and list((plain / "tb").iterdir())
    assert BAR.search(err) and not BAR.search(plain_err)


def test_clip_grad_norm_bounds_the_step(tmp_path: Path) -> None:
    """train.clip_grad_norm: one SGD step at lr 1 moves the weights by at most the norm."""
    base = [
        "train.max_steps=1",
        "train.tensorboard=false",
        "optim.type=sgd",
        "optim.lr=1.0",
        "optim.momentum=0",
        "optim.weight_decay=0",
        "sched.type=constant",
        "sched.warmup_ratio=0",
    ]
    moved = {}
    for name, extra in (("free", []), ("clipped", ["train.clip_grad_norm=1e-6"])):
        cfg = load_config(TOY, ToyConfig, [*base, *extra])
        trainer = Trainer(ToyTask(cfg), tmp_path / name)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.fit()
        after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        moved[name] = float((after - before).norm())
    assert moved["clipped"] <= 1.01e-6 < 1e-3 < moved["free"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("toy_keys") / "run"
    args = ["-o", "train.max_steps=2", "-o", "train.tensorboard=false"]
    assert main(["toy", "train", "-c", str(TOY), *args, "--out", str(run)]) == 0
    return run


def export_report(kit: str, weights: Path, out: Path, *overrides: str) -> dict[str, Any]:
    args = [a for o in overrides for a in ("-o", o)]
    assert main([kit, "export", "--weights", str(weights), "--out", str(out), *args]) == 0
    return json.loads((out / "export_report.json").read_text())


def test_export_keys_reach_the_export(toy_run: Path, tmp_path: Path) -> None:
    """export.opset, atol, quantize, quantize_mode, quantize_op_types and
    quantize_keep_final_float through the shared export verb (toy, seg, det, text)."""
    report = export_report(
        "toy",
        toy_run / "last.pt",
        tmp_path / "export",
        "export.opset=13",
        "export.atol=0.5",
        "export.quantize=true",  # no --quantize flag: the key alone asks for int8
        "export.quantize_mode=static",
        "export.quantize_op_types=[Gemm]",
        "export.quantize_keep_final_float=true",
    )
    assert report["opset"] == 13 and report["onnx"]["atol"] == 0.5
    int8 = report["int8"]
    assert (tmp_path / "export" / int8["file"]).is_file()
    assert int8["mode"] == "static" and int8["op_types"] == ["Gemm"]
    assert int8["float_nodes"], "the final Gemm stays float with quantize_keep_final_float"


@pytest.fixture(scope="module")
def ctr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SaveLog, str]:
    """The ctr loop with its run keys changed (tiny.yaml: log_interval 5, no TensorBoard,
    evaluation at the end of the epoch only)."""
    from e2ekit.ctr.engine.fit import CtrTrainer

    run = tmp_path_factory.mktemp("ctr_keys") / "run"
    overrides = [
        "train.max_steps=4",
        "train.log_interval=1",
        "train.eval_interval=2",
        "train.save_interval=3",
        "train.tensorboard=true",
        "train.progress=false",
    ]
    trainer = CtrTrainer(load_config(CTR, CtrConfig, overrides), run)
    hook = SaveLog()
    trainer.hooks.append(hook)
    with as_the_cli() as err:
        trainer.fit()
    return run, hook, err.getvalue()


def test_ctr_loop_keys(ctr_run: tuple[Path, SaveLog, str], tmp_path: Path) -> None:
    """train.log_interval, eval_interval, save_interval, tensorboard and progress in the ctr
    loop; progress=true (its default) draws the bar that progress=false hid."""
    from e2ekit.ctr.engine.fit import CtrTrainer

    run, hook, err = ctr_run
    assert logged_steps(run, r"step (\d+) loss") == [1, 2, 3, 4]
    assert eval_steps(run) == [2, 4]
    assert last_saves(hook) == [2, 3, 4]
    assert list((run / "tb").iterdir())
    assert not BAR.search(err)
    cfg = load_config(CTR, CtrConfig, ["train.max_steps=1", "data.val=null"])
    with as_the_cli() as shown:
        CtrTrainer(cfg, tmp_path / "bar").fit()
    assert BAR.search(shown.getvalue())


def test_ctr_export_keys(ctr_run: tuple[Path, SaveLog, str], tmp_path: Path) -> None:
    """export.opset, atol, quantize, quantize_mode, calibration_samples, quantize_op_types
    and quantize_keep_final_float through the ctr export verb."""
    run, _, _ = ctr_run
    report = export_report(
        "ctr",
        run / "last.pt",
        tmp_path / "export",
        "export.opset=13",
        "export.atol=0.5",
        "export.quantize=true",
        "export.quantize_mode=static",
        "export.calibration_samples=3",
        "export.quantize_op_types=[Gemm]",
        "export.quantize_keep_final_float=true",
    )
    assert report["opset"] == 13 and report["onnx"]["atol"] == 0.5
    int8 = report["int8"]
    assert int8["mode"] == "static" and int8["op_types"] == ["Gemm"]
    assert int8["calibration"]["cases"] == 3 and int8["float_nodes"]


def test_ctr_builtin_data_keys(ctr_run: tuple[Path, SaveLog, str]) -> None:
    """data.builtin.train_rows, val_rows, test_rows, seed and ctr shape the generated
    Criteo data (one generation with all five changed; ctr_run built the tiny config's)."""
    from e2ekit.ctr.data.splits import split_paths

    keys = ["train_rows=200", "val_rows=100", "test_rows=50", "seed=1", "ctr=0.3"]
    cfg = load_config(
        CTR, CtrConfig, ["data.test=builtin:test", *(f"data.builtin.{k}" for k in keys)]
    )
    rows = {s: Path(split_paths(cfg, s)).read_text().splitlines() for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 200, "val": 100, "test": 50}
    labels = [int(line.split("\t", 1)[0]) for r in rows.values() for line in r]
    assert sum(labels) / len(labels) > 0.2  # the tiny config's generator: 0.12

    def c1_values(lines: list[str]) -> set[str]:  # C1: the 15th field, a hashed category
        return {line.split("\t")[14] for line in lines} - {""}

    tiny = Path(split_paths(load_config(CTR, CtrConfig, []), "train")).read_text().splitlines()
    assert not c1_values(rows["train"]) & c1_values(tiny), "seed 1 draws another vocabulary"


PARTS = ["20261101/00", "20261101/01", "20261101/02", "20261101/03"]


def test_ctr_stream_keys(tmp_path: Path) -> None:
    """stream.donefile, poll_seconds, idle_timeout, max_partitions, keep_checkpoints,
    eval_before_train, evict_after and export_each in ``train --stream``: p0 and p1 are
    marked done (by READY, not _SUCCESS) at the start, p2 and p3 while the loop waits."""
    from e2ekit.ctr.data.synthetic import write_synthetic_criteo
    from e2ekit.ctr.engine.fit import CtrTrainer
    from e2ekit.ctr.engine.stream import fit_stream

    stream, run = tmp_path / "stream", tmp_path / "run"
    write_synthetic_criteo(stream, rows=4 * 200, seed=3, partitions=PARTS)
    for part in PARTS:
        (stream / part / "_SUCCESS").unlink()
    for part in PARTS[:2]:
        (stream / part / "READY").touch()
    cfg = load_config(
        CTR,
        CtrConfig,
        [
            "stream.donefile=READY",
            "stream.poll_seconds=0.05",
            "stream.idle_timeout=30",
            "stream.max_partitions=3",
            "stream.keep_checkpoints=1",
            "stream.eval_before_train=false",
            "stream.evict_after=1",
            "stream.export_each=false",
        ],
    )
    marked: list[float] = []

    def mark_later() -> None:  # once p1 is trained, and the loop is polling for more
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "20261101-01.pt").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        time.sleep(0.3)
        for part in PARTS[2:]:
            (stream / part / "READY").touch()
        marked.append(time.monotonic())

    thread = threading.Thread(target=mark_later, daemon=True)
    thread.start()
    summary = fit_stream(CtrTrainer(cfg, run), stream)
    done = time.monotonic()
    thread.join(5)
    assert summary["partitions_trained"] == 3 and summary["last_partition"] == PARTS[2]
    assert marked and done - marked[0] < 5, "p2 waited longer than a few polls"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["20261101-02.pt"]
    history = torch.load(run / "last.pt", weights_only=False)["stream"]["history"]
    assert all("progressive_auc" not in h and "evicted_rows" in h for h in history)
    assert not (run / "exports").exists()
