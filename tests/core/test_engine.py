"""Training engine: exact resume after kill -9, DDP parity, safe checkpoints, schedules."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2ekit.core.config import load_config
from e2ekit.core.engine import Trainer
from e2ekit.core.engine.amp import resolve_amp
from e2ekit.core.engine.checkpoint import load_checkpoint
from e2ekit.core.engine.ema import ModelEMA
from e2ekit.core.engine.optim import lr_factor
from e2ekit.core.engine.sampler import ResumableBatchSampler
from e2ekit.core.errors import CheckpointError
from e2ekit.core.schema import SchedConfig
from e2ekit.toy.task import ToyConfig, ToyTask

from ..conftest import ROOT, run_subprocess

TINY = ROOT / "configs" / "toy" / "tiny.yaml"
# Dropout, EMA, accumulation, warmup+cosine and worker processes all in play.
RESUME_OVERRIDES = [
    "train.max_steps=12",
    "train.save_interval=6",
    "train.eval_interval=4",
    "train.grad_accum=2",
    "train.batch_size=16",
    "train.num_workers=1",
    "train.ema.enabled=true",
    "train.ema.decay=0.9",
    "model.dropout=0.2",
    "sched.type=cosine",
    "sched.warmup_steps=3",
]


def make_trainer(out: Path, overrides: list[str], resume: bool = False) -> Trainer:
    """A trainer on the tiny config; a resumed one reads the run's own config.yaml (as the CLI)."""
    cfg = load_config(out / "config.yaml" if resume else TINY, ToyConfig, overrides)
    return Trainer(ToyTask(cfg), out, resume=resume)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def eval_lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_kill_is_exact(tmp_path: Path) -> None:
    full = tmp_path / "full"
    make_trainer(full, RESUME_OVERRIDES).fit()

    killed = tmp_path / "killed"
    proc = run_subprocess(
        [
            "toy",
            "train",
            "-c",
            TINY,
            "--out",
            killed,
            *[arg for o in RESUME_OVERRIDES for arg in ("-o", o)],
            "-o",
            "train.hooks=[{type: 'kill_hook:KillAtStep', step: 6}]",
        ],
        env_extra={"PYTHONPATH": str(Path(__file__).parent)},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_checkpoint(killed / "last.pt")["step"] == 6
    assert not (killed / "metrics.json").exists()

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        resumed = make_trainer(killed, [], resume=True)
        assert resumed.step == 6
        resumed.fit()
    finally:
        sys.path.remove(str(Path(__file__).parent))

    a, b = weights(full / "last.pt"), weights(killed / "last.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    ema_a = load_checkpoint(full / "last.pt")["ema"]["module"]
    ema_b = load_checkpoint(killed / "last.pt")["ema"]["module"]
    for name in ema_a:
        torch.testing.assert_close(ema_a[name], ema_b[name], rtol=0, atol=1e-6)
    assert eval_lines(full) == eval_lines(killed)
    assert [r["step"] for r in eval_lines(full)] == [4, 8, 12]
    assert json.loads((full / "metrics.json").read_text()) == json.loads(
        (killed / "metrics.json").read_text()
    )


def test_resume_without_last_checkpoint_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_trainer(run, ["train.max_steps=2"]).fit()
    (run / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        make_trainer(run, [], resume=True)


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed",
)
def test_ddp_two_processes_match_one_process_on_combined_batch(tmp_path: Path) -> None:
    common = ["train.max_steps=6", "train.eval_interval=3", "data.num_train=192", "optim.lr=0.01"]
    single = tmp_path / "single"
    make_trainer(single, [*common, "train.batch_size=32"]).fit()

    ddp = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "e2ekit",
        "toy",
        "train",
        "-c",
        str(TINY),
        "--out",
        str(ddp),
        "-o",
        "train.batch_size=16",
    ]
    for o in common:
        args += ["-o", o]
    env = {**os.environ, "E2EKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = weights(single / "last.pt"), weights(ddp / "last.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    ckpt = load_checkpoint(ddp / "last.pt")
    assert ckpt["world_size"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    # Only rank 0 writes: one set of files, each evaluation logged once.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    log_text = (ddp / "train.log").read_text()
    assert log_text.count("eval step 3:") == 1 and log_text.count("eval step 6:") == 1
    assert [r["step"] for r in eval_lines(ddp)] == [3, 6]


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)


def test_checkpoint_contents_load_weights_only(tmp_path: Path) -> None:
    make_trainer(tmp_path / "run", ["train.max_steps=3", "train.ema.enabled=true"]).fit()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "step", "config"} <= set(ckpt)
    assert ckpt["step"] == 3
    assert (tmp_path / "run" / "best.pt").is_file()
    assert list((tmp_path / "run" / "tb").iterdir()), "TensorBoard event file missing"


def test_gradient_accumulation_matches_big_batch(tmp_path: Path) -> None:
    base = [
        "train.max_steps=4",
        "train.shuffle=false",
        "data.num_train=128",
        "optim.type=sgd",
        "optim.lr=0.5",
        "optim.momentum=0",
    ]
    make_trainer(tmp_path / "big", [*base, "train.batch_size=32"]).fit()
    make_trainer(tmp_path / "acc", [*base, "train.batch_size=8", "train.grad_accum=4"]).fit()
    a, b = weights(tmp_path / "big" / "last.pt"), weights(tmp_path / "acc" / "last.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_early_stopping_and_best_checkpoint(tmp_path: Path) -> None:
    # lr 0 never improves the metric after the first evaluation.
    run = tmp_path / "run"
    metrics = make_trainer(
        run,
        [
            "train.max_steps=50",
            "train.eval_interval=2",
            "train.early_stop.patience=2",
            "optim.lr=1e-12",
            "train.metric=loss",
            "train.metric_mode=min",
            "train.early_stop.min_delta=0.1",
        ],
    ).fit()
    assert len(eval_lines(run)) == 3
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert metrics["step"] == 2 and metrics["best_metric"] == "loss"


def test_amp_bf16_trains_on_cpu(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "run", ["train.max_steps=2", "train.amp=bf16"])
    assert trainer.amp_dtype == torch.bfloat16
    trainer.fit()
    assert resolve_amp("off", torch.device("cpu")) is None


@pytest.mark.parametrize(("major", "dtype"), [(9, torch.bfloat16), (7, torch.float16)])
def test_amp_auto_on_gpus_picks_bf16_where_the_gpu_has_it(
    monkeypatch: pytest.MonkeyPatch, major: int, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert resolve_amp("auto", torch.device("cuda")) == dtype


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "poly"])
def test_lr_schedules_warm_up_then_decay(kind: str) -> None:
    f = lr_factor(SchedConfig(type=kind, warmup_steps=10, min_lr_ratio=0.1), total_steps=100)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    if kind == "constant":
        assert f(99) == 1.0
    else:
        assert f(50) < 1.0
        assert f(100) == pytest.approx(0.1)
    if kind == "cosine":
        assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_sampler_shards_global_batches_and_skips() -> None:
    one = ResumableBatchSampler(64, 8, seed=3, world=1)
    r0 = ResumableBatchSampler(64, 4, seed=3, rank=0, world=2)
    r1 = ResumableBatchSampler(64, 4, seed=3, rank=1, world=2)
    for b, x, y in zip(one, r0, r1, strict=True):
        assert sorted(b) == sorted(x + y)
    one.set_epoch(1, skip_batches=3)
    tail = list(one)
    one.set_epoch(1)
    assert tail == list(one)[3:]


def test_sampler_length_buckets_are_tight_random_and_resumable() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (640,), generator=gen).tolist()
    plain = ResumableBatchSampler(640, 8, seed=1)
    bucketed = ResumableBatchSampler(640, 8, seed=1, lengths=lengths, bucket=10)

    def spread(sampler: ResumableBatchSampler) -> float:
        return sum(
            max(lengths[i] for _, i in b) - min(lengths[i] for _, i in b) for b in sampler
        ) / len(sampler)

    assert spread(bucketed) < spread(plain) / 4  # little padding per batch
    epoch0 = [i for b in bucketed for _, i in b]
    assert sorted(epoch0) == list(range(640))  # every sample once
    assert [len(b) for b in bucketed] == [8] * 80
    bucketed.set_epoch(1)
    epoch1 = list(bucketed)
    assert [i for b in epoch1 for _, i in b] != epoch0  # reshuffled per epoch
    bucketed.set_epoch(1, skip_batches=5)
    assert list(bucketed) == epoch1[5:]  # exact resume
    r0 = ResumableBatchSampler(640, 4, seed=1, rank=0, world=2, lengths=lengths, bucket=10)
    r1 = ResumableBatchSampler(640, 4, seed=1, rank=1, world=2, lengths=lengths, bucket=10)
    bucketed.set_epoch(0)
    for b, x, y in zip(bucketed, r0, r1, strict=True):
        assert sorted(b) == sorted(x + y)


def test_ema_tracks_weights() -> None:
    net = torch.nn.Linear(2, 1)
    ema = ModelEMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5 * net.weight)
