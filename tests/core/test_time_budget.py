"""``train.time_budget``: the duration parser, a step count fitted to the budget with the LR
schedule re-timed to its end, the hard stop, resume, and the figures in the summary.

The schedule tests drive the Trainer with a fake clock (each optimizer step and each
evaluation advance it by set amounts), so they are exact and never depend on the machine's
speed; one run on the real clock checks the wiring with generous bounds only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from e2ekit.core.cli import main
from e2ekit.core.config import load_config
from e2ekit.core.engine import Hook, Trainer
from e2ekit.core.engine.budget import format_duration, parse_duration
from e2ekit.core.engine.checkpoint import load_checkpoint
from e2ekit.core.errors import ConfigError
from e2ekit.core.schema import TrainConfig
from e2ekit.toy.task import ToyConfig, ToyTask

from ..conftest import ROOT

TINY = ROOT / "configs" / "toy" / "tiny.yaml"  # 8 batches an epoch, 4 val batches
UNBOUNDED = ("train.epochs=null", "train.max_steps=null")  # the budget alone decides
COSINE = ("sched.type=cosine", "sched.warmup_ratio=0.1", "sched.min_lr_ratio=0.1")
LR = 1e-3


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ticks(Hook):
    """Each optimizer step costs ``step_s`` seconds (``slow_s`` from step ``slow_from`` on;
    ``first_s`` for the first step, which pays for warm-up, if given)."""

    def __init__(
        self,
        clock: FakeClock,
        step_s: float,
        slow_from: int = 0,
        slow_s: float = 0,
        first_s: float | None = None,
    ) -> None:
        self.clock, self.step_s, self.slow_from, self.slow_s = clock, step_s, slow_from, slow_s
        self.first_s = first_s
        self.lrs: list[float] = []

    def after_step(self, trainer: Trainer) -> None:  # type: ignore[override]
        slow = self.slow_from and trainer.step >= self.slow_from
        first = self.first_s is not None and not self.lrs
        self.clock.now += self.first_s if first else self.slow_s if slow else self.step_s
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def budget_trainer(
    out: Path, clock: FakeClock, *overrides: str, eval_s: float = 5.0, resume: bool = False
) -> Trainer:
    """A toy trainer on the fake clock whose every evaluation takes ``eval_s`` seconds."""
    source = out / "config.yaml" if resume else TINY
    opts = [] if resume else [f"optim.lr={LR}", "train.progress=false", *overrides]
    cfg = load_config(source, ToyConfig, opts if not resume else list(overrides))
    task = ToyTask(cfg)
    evaluate = task.evaluate

    def timed_evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        clock.now += eval_s
        return evaluate(*args, **kwargs)

    task.evaluate = timed_evaluate  # type: ignore[method-assign]
    return Trainer(task, out, resume=resume, clock=clock)


def evals(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


# -- the parser ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1.5h", 5400),
        ("1h30m", 5400),
        ("2h15m30s", 8130),
        ("1h 5s", 3605),
        ("45", 45),
        (45, 45),
        (2.5, 2.5),
        (" 10M ", 600),
    ],
)
def test_durations_accepted(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert TrainConfig(time_budget=value).time_budget == seconds


@pytest.mark.parametrize("value", ["abc", "10x", "m10", "30m1h", "1h1h", "0", 0, -5, "-5s", True])
def test_durations_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"90s, 10m, 1\.5h, 1h30m"):
        parse_duration(value)


def test_malformed_budget_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.time_budget.*10m, 1\.5h, 1h30m"):
        load_config(TINY, ToyConfig, ["train.time_budget=ten minutes"])


def test_no_budget_by_default_and_epochs_stay_optional_with_one() -> None:
    assert load_config(TINY, ToyConfig, []).train.time_budget is None
    cfg = load_config(TINY, ToyConfig, ["train.time_budget=1m", *UNBOUNDED])
    assert cfg.train.epochs is None and cfg.train.max_steps is None
    assert load_config(TINY, ToyConfig, list(UNBOUNDED)).train.epochs == 1  # no budget: 1 epoch


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 72, 432, 3900)] == ["5s", "1m12s", "7m12s", "1h05m"]


# -- the fitted schedule (fake clock) -------------------------------------------------------------
def test_budget_fits_steps_and_cosine_ends_at_the_last_step(tmp_path: Path) -> None:
    clock, run = FakeClock(), tmp_path / "run"
    trainer = budget_trainer(run, clock, "train.time_budget=100", *UNBOUNDED, *COSINE)
    ticks = Ticks(clock, step_s=1.0)
    trainer.hooks.append(ticks)
    result = trainer.fit()

    last = trainer.step
    assert trainer.total_steps == last  # the loop ended at the plan's end, not a hard stop
    assert not trainer.budget.stopped_early
    # 1 s a step and 5 s an eval (each 8 steps): most of the budget is used, none overrun
    assert 80 <= clock.now <= 100
    assert last > 8 * 5  # past several epochs: the budget, not epochs, set the length
    # the final step was evaluated and saved, last.pt is at the end, best.pt exists
    assert evals(run)[-1]["step"] == last
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == last and (run / "best.pt").is_file()
    # the cosine ended exactly at the fitted end: the LR after the last step is the floor
    assert ckpt["scheduler"]["last_epoch"] == last
    assert math.isclose(ckpt["optimizer"]["param_groups"][0]["lr"], 0.1 * LR, rel_tol=1e-6)
    # warm-up is 10% of the fitted total, then the LR falls to the end
    assert ticks.lrs[-1] < ticks.lrs[len(ticks.lrs) // 2] < max(ticks.lrs)
    # the summary and metrics.json carry the budget's figures
    assert result["time_budget_s"] == 100 and result["time_used_s"] == pytest.approx(clock.now)
    assert result["budget_steps"] == last
    assert result["budget_epochs"] == pytest.approx(last / 8, abs=1e-3)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["time_budget_s"] == 100 and saved["time_used_s"] == result["time_used_s"]


def test_the_budget_replaces_epochs_and_max_steps(tmp_path: Path) -> None:
    clock = FakeClock()
    trainer = budget_trainer(
        tmp_path / "run", clock, "train.time_budget=100", "train.max_steps=12", *COSINE
    )
    trainer.hooks.append(Ticks(clock, step_s=1.0))
    trainer.fit()
    assert trainer.step > 12 and 80 <= clock.now <= 100  # the budget, not max_steps, decided
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert math.isclose(ckpt["optimizer"]["param_groups"][0]["lr"], 0.1 * LR, rel_tol=1e-6)


def test_eval_interval_and_grad_accum_are_counted(tmp_path: Path) -> None:
    clock, run = FakeClock(), tmp_path / "run"
    trainer = budget_trainer(
        run,
        clock,
        "train.time_budget=80",
        *UNBOUNDED,
        "train.eval_interval=5",
        "train.grad_accum=2",
        eval_s=2.0,
    )
    trainer.hooks.append(Ticks(clock, step_s=1.0))
    trainer.fit()
    steps = [e["step"] for e in evals(run)]
    assert steps[-1] == trainer.step and all(s % 5 == 0 for s in steps[:-1])
    assert trainer.micro == 2 * trainer.step  # two micro-batches a step
    assert 64 <= clock.now <= 80


def test_steps_that_slow_down_hit_the_hard_stop_with_a_final_eval(tmp_path: Path) -> None:
    clock, run = FakeClock(), tmp_path / "run"
    trainer = budget_trainer(run, clock, "train.time_budget=100", *UNBOUNDED, *COSINE)
    trainer.hooks.append(Ticks(clock, step_s=1.0, slow_from=55, slow_s=6.0))  # after 50%'s plan
    trainer.fit()
    assert clock.now <= 100  # never overrun, though the steps got 6x slower
    assert evals(run)[-1]["step"] == trainer.step
    assert load_checkpoint(run / "last.pt")["step"] == trainer.step


class SpeedsUp(Hook):
    """Steps cost ``slow_s`` until ``until`` (warm caches, a busy machine), then ``fast_s``."""

    def __init__(self, clock: FakeClock, slow_s: float, fast_s: float, until: int) -> None:
        self.clock, self.slow_s, self.fast_s, self.until = clock, slow_s, fast_s, until

    def after_step(self, trainer: Trainer) -> None:  # type: ignore[override]
        self.clock.now += self.slow_s if trainer.step <= self.until else self.fast_s


def test_steps_that_speed_up_extend_the_plan_to_use_the_budget(tmp_path: Path) -> None:
    """The probe times slow steps and plans too few; at that planned end the run re-plans
    with the faster steps instead of stopping with most of the budget unused."""
    clock, run = FakeClock(), tmp_path / "run"
    trainer = budget_trainer(run, clock, "train.time_budget=200", *UNBOUNDED, *COSINE)
    trainer.hooks.append(SpeedsUp(clock, slow_s=8.0, fast_s=1.0, until=5))
    trainer.fit()
    assert clock.now <= 200 and clock.now >= 150  # the budget used, not a third of it
    assert evals(run)[-1]["step"] == trainer.step
    ckpt = load_checkpoint(run / "last.pt")
    assert math.isclose(ckpt["optimizer"]["param_groups"][0]["lr"], 0.1 * LR, rel_tol=1e-6)


def test_a_slow_first_step_is_not_taken_for_the_step_time(tmp_path: Path) -> None:
    """Warm-up makes the first step slow: the plan and the hard stop go by later steps."""
    clock, run = FakeClock(), tmp_path / "run"
    trainer = budget_trainer(run, clock, "train.time_budget=100", *UNBOUNDED, eval_s=5.0)
    trainer.hooks.append(Ticks(clock, step_s=1.0, first_s=30.0))
    trainer.fit()
    assert not trainer.budget.stopped_early
    assert trainer.step > 30 and 80 <= clock.now <= 100
    assert trainer.budget.step_time == pytest.approx(1.0)


def test_early_stop_still_ends_a_budgeted_run(tmp_path: Path) -> None:
    clock = FakeClock()
    trainer = budget_trainer(
        tmp_path / "run",
        clock,
        "train.time_budget=1000",
        *UNBOUNDED,
        "train.metric=loss",
        "train.metric_mode=max",  # the loss falls: no gain by this measure
        "train.early_stop.patience=1",
    )
    trainer.hooks.append(Ticks(clock, step_s=1.0))
    result = trainer.fit()
    assert trainer.stop_reason.startswith("early stop") and trainer.step == 16
    assert result["time_used_s"] < 1000


class _CtrlCAt(Hook):
    def __init__(self, step: int) -> None:
        self.at = step

    def after_step(self, trainer: Trainer) -> None:  # type: ignore[override]
        if trainer.step == self.at:
            raise KeyboardInterrupt


def test_resume_keeps_the_time_used(tmp_path: Path) -> None:
    clock, run = FakeClock(), tmp_path / "run"
    first = budget_trainer(run, clock, "train.time_budget=100", *UNBOUNDED, *COSINE)
    first.hooks += [Ticks(clock, step_s=1.0), _CtrlCAt(30)]
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    used = load_checkpoint(run / "last.pt")["budget"]["used_s"]
    assert used == pytest.approx(clock.now) and used > 30

    later = FakeClock()  # another process: its clock starts anywhere
    later.now = 5000.0
    resumed = budget_trainer(run, later, eval_s=5.0, resume=True)
    assert resumed.total_steps >= 30  # continues the saved plan until it plans again
    resumed.hooks.append(Ticks(later, step_s=1.0))
    result = resumed.fit()
    assert used + (later.now - 5000.0) == pytest.approx(result["time_used_s"])
    assert result["time_used_s"] <= 100
    ckpt = load_checkpoint(run / "last.pt")
    assert math.isclose(ckpt["optimizer"]["param_groups"][0]["lr"], 0.1 * LR, rel_tol=1e-6)


def test_resume_with_the_budget_spent_evaluates_and_saves_without_training(
    tmp_path: Path,
) -> None:
    clock, run = FakeClock(), tmp_path / "run"
    first = budget_trainer(run, clock, "train.time_budget=100", *UNBOUNDED)
    first.hooks += [Ticks(clock, step_s=1.0), _CtrlCAt(20)]
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    # resumed with a smaller budget than the time already used: no step, a final eval
    resumed = budget_trainer(run, FakeClock(), "train.time_budget=10", resume=True)
    result = resumed.fit()
    assert resumed.step == 20 and result["budget_steps"] == 20
    assert result["time_budget_s"] == 10 and result["time_used_s"] > 20
    assert evals(run)[-1]["step"] == 20 and load_checkpoint(run / "last.pt")["step"] == 20


# -- real clock and the CLI ----------------------------------------------------------------------
def test_cli_run_with_a_budget_ends_evaluated_with_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few seconds of budget on the real clock: bounds generous enough for a loaded machine."""
    run = tmp_path / "run"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args = ["toy", "train", "-c", str(TINY), "--out", str(run)]
    for o in ("train.time_budget=3s", *UNBOUNDED, *COSINE, "train.progress=false"):
        args += ["-o", o]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["time_budget_s"] == 3 and 0 < summary["time_used_s"] < 3 + 60
    assert summary["budget_steps"] >= 1 and "accuracy" in summary
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert load_checkpoint(run / "last.pt")["step"] == summary["budget_steps"]
    assert evals(run)[-1]["step"] == summary["budget_steps"]
