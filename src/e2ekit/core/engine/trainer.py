"""The training loop every kit uses: short step, explicit eval/checkpoint, few hooks.

Correctness-critical math lives only here: gradient accumulation normalisation,
AMP loss scaling and unscale-before-clip, DDP ``no_sync`` on accumulation steps,
exact resume (weights, optimizer, scheduler, scaler, EMA, step, data order, RNG).
The run folder and best/early-stop bookkeeping are :class:`~e2ekit.core.engine.run.Run`'s.

On CUDA a step never waits for the device: the loss stays a device tensor, summed over
the log window and read (with the first non-finite step, if any) only at log intervals.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from e2ekit.core.config import to_dict
from e2ekit.core.engine import dist
from e2ekit.core.engine.amp import autocast, make_scaler, resolve_amp
from e2ekit.core.engine.budget import PROBE_SHARE, TimeBudget, format_duration
from e2ekit.core.engine.checkpoint import (
    FORMAT,
    capture_rng,
    load_checkpoint,
    model_state,
    restore_rng,
    rng_from_plain,
    rng_to_plain,
)
from e2ekit.core.engine.ema import ModelEMA
from e2ekit.core.engine.env import resolve_device, seed_everything, set_determinism
from e2ekit.core.engine.hooks import Hook, build_hooks
from e2ekit.core.engine.optim import build_optimizer, build_scheduler, retime_scheduler
from e2ekit.core.engine.run import RunLoop, default_run_dir
from e2ekit.core.engine.sampler import ResumableBatchSampler, SeededDataset
from e2ekit.core.engine.task import Task
from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.fileio import atomic_write_json
from e2ekit.core.logs import jsonable, log
from e2ekit.core.progress import progress

__all__ = ["Trainer", "default_run_dir", "eval_loader", "run_evaluation", "to_device", "unwrap"]

PROVISIONAL_STEPS = 10**9  # a budgeted run's length before its first step is timed
PROBE_PERCENT = 100 * PROBE_SHARE


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def announce_epoch(model: nn.Module, epoch: int) -> None:
    """Tell every submodule that declares ``tracks_epoch = True`` the epoch being trained (a
    schedule inside the model, e.g. a detector switching its target assigner), through any
    wrapper (DDP, the kit's train model)."""
    for module in model.modules():
        if getattr(type(module), "tracks_epoch", False):
            module.epoch = epoch


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def eval_loader(task: Task, split: str = "val", batch_size: int | None = None) -> DataLoader | None:
    """A deterministic loader over ``split`` (None when the task has no such split)."""
    ds = task.build_dataset(split)
    if ds is None:
        return None
    tc = task.cfg.train
    size = batch_size or tc.eval_batch_size or tc.batch_size
    lengths = task.sample_lengths(ds)
    if lengths is not None:  # length-sorted batches: the task's evaluate must not rely on order
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        return DataLoader(
            ds,
            batch_sampler=batches,
            num_workers=tc.num_workers,
            collate_fn=task.collate_fn(split),
            persistent_workers=tc.num_workers > 0,
        )
    return DataLoader(
        ds,
        batch_size=size,
        shuffle=False,
        num_workers=tc.num_workers,
        collate_fn=task.collate_fn(split),
        generator=torch.Generator().manual_seed(0),
        persistent_workers=tc.num_workers > 0,  # evaluated many times in one run
    )


def run_evaluation(
    task: Task, model: nn.Module, loader: DataLoader, device: torch.device, bar: bool = True
) -> dict:
    was_training = model.training
    model.eval()
    bar = progress(loader, total=len(loader), desc="eval", unit="batch", enabled=bar)
    try:
        with torch.inference_mode():
            metrics = task.evaluate(model, bar, device)
    finally:
        bar.close()
        model.train(was_training)
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}


class Trainer(RunLoop):
    """Builds everything from ``task.cfg`` before touching ``out_dir``, then trains.

    ``clock``: seconds for ``train.time_budget`` (tests pass a fake one)."""

    def __init__(
        self,
        task: Task,
        out_dir: str | Path | None = None,
        *,
        config_name: str = "config",
        resume: bool = False,
        weights: str | Path | None = None,
        overwrite: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        started = clock()  # a time budget counts from here: building data and model is used
        self.task = task
        self.cfg = task.cfg
        self.tc = task.cfg.train
        self.resume = resume
        self.device = resolve_device(self.cfg.device)
        dist.init_distributed(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.metric_name = self.tc.metric or task.default_metric
        self.metric_mode = self.tc.metric_mode if self.tc.metric else task.metric_mode
        self.attach_run(
            self.cfg,
            out_dir,
            task.kit,
            config_name,
            metric=self.metric_name,
            mode=self.metric_mode,
            resume=resume,
            overwrite=overwrite,
            is_main=self.is_main,
        )
        set_determinism(self.cfg.deterministic)
        seed_everything(self.cfg.seed)

        self.model = task.build_model().to(self.device)
        if self.tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        train_ds = task.build_dataset("train")
        if train_ds is None:
            raise ConfigError("no training data: set the data keys of the train split")
        self.sampler = ResumableBatchSampler(
            len(train_ds),
            self.tc.batch_size,
            shuffle=self.tc.shuffle,
            drop_last=self.tc.drop_last,
            seed=self.cfg.seed,
            rank=self.rank,
            world=self.world,
            lengths=task.sample_lengths(train_ds),
            bucket=task.bucket,
        )
        # A private generator keeps DataLoader worker seeding off the global RNG stream;
        # workers persist across epochs (samples are keyed by epoch, so order stays exact).
        self.loader = DataLoader(
            SeededDataset(train_ds, self.cfg.seed),
            batch_sampler=self.sampler,
            num_workers=self.tc.num_workers,
            collate_fn=task.collate_fn("train"),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed),
            persistent_workers=self.tc.num_workers > 0,
        )
        self.val_loader = eval_loader(task, "val") if self.is_main else None
        self.batches_per_epoch = len(self.sampler)
        upper: int | None = None  # with a time budget, the budget alone sets the length
        if self.tc.time_budget:
            if (self.tc.epochs or self.tc.max_steps) and self.is_main:
                log.info(
                    "train.time_budget sets the run's length: train.epochs=%s / max_steps=%s "
                    "are not used",
                    self.tc.epochs,
                    self.tc.max_steps,
                )
        elif self.tc.max_steps:
            upper = self.tc.max_steps
        else:
            micro = (self.tc.epochs or 1) * self.batches_per_epoch
            upper = max(1, micro // self.tc.grad_accum)
        self.budget = self._make_budget(upper, clock, started) if self.tc.time_budget else None
        # without a bound, the schedule spans a provisional length until the first step's time
        self.total_steps = upper if upper is not None else PROVISIONAL_STEPS
        self._evaluated_at = -1  # step of the latest evaluation
        self._budget_planned = False  # rank 0 has fitted the step count (told to every rank)

        self.optimizer = build_optimizer(self.model, self.cfg.optim, task.param_groups(self.model))
        self.scheduler = build_scheduler(self.optimizer, self.cfg.sched, self.total_steps)
        self.amp_dtype = resolve_amp(self.tc.amp, self.device)
        self.scaler = make_scaler(self.device, self.amp_dtype)
        self.ema = (
            ModelEMA(self.model, self.tc.ema.decay, self.tc.ema.warmup_steps)
            if self.tc.ema.enabled
            else None
        )
        self.hooks: list[Hook] = build_hooks([h.model_dump() for h in self.tc.hooks])

        self.step = 0
        self.micro = 0
        self.last_metrics: dict[str, Any] = {}
        if resume:
            self._load_resume_state()
        elif weights:
            self._load_weights(weights)
        if self.world > 1:
            self.model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # RNG of everything after init differs per rank (dropout), but is reproducible.
        if not resume:
            seed_everything(self.cfg.seed + self.rank)

    def _make_budget(self, upper: int | None, clock: Callable[[], float], t0: float) -> TimeBudget:
        steps_per_epoch = self.batches_per_epoch / self.tc.grad_accum
        budget = TimeBudget(
            float(self.tc.time_budget or 0),
            upper_bound=upper,
            steps_per_epoch=steps_per_epoch,
            steps_per_eval=self.tc.eval_interval or steps_per_epoch,
            steps_per_save=self.tc.save_interval,
            micro_per_step=self.tc.grad_accum,
            eval_batches=len(self.val_loader) if self.val_loader is not None else 0,
            clock=clock,
        )
        budget.t0 = t0
        return budget

    # -- state ------------------------------------------------------------------------
    def _load_resume_state(self) -> None:
        ckpt = load_checkpoint(self.run.last_checkpoint(), map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.step, self.micro = int(ckpt["step"]), int(ckpt["micro"])
        self.run.load_state_dict(ckpt)
        if self.budget is not None and ckpt.get("budget"):
            self.budget.load_state_dict(ckpt["budget"])
            planned = self.budget.planned
            if planned:  # the schedule continues the saved plan until this run re-plans
                self._set_total(max(int(planned), self.step), retime=True)
        self.last_metrics = ckpt.get("metrics") or {}
        for hook, state in zip(self.hooks, ckpt.get("hooks", []), strict=False):
            hook.load_state_dict(state)
        rng = ckpt["rng"]
        restore_rng(rng[self.rank] if isinstance(rng, list) and self.rank < len(rng) else rng)

    def _load_weights(self, weights: str | Path) -> None:
        ckpt = load_checkpoint(weights, map_location=self.device)
        missing, unexpected = self.model.load_state_dict(model_state(ckpt), strict=False)
        if missing or unexpected:
            log.warning(
                "--weights %s: %d missing and %d unexpected keys (e.g. %s)",
                weights,
                len(missing),
                len(unexpected),
                (missing + unexpected)[:3],
            )

    def state_dict(self) -> dict[str, Any]:
        rngs = [capture_rng()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, rng_to_plain(rngs[0]))
            rngs = [rng_from_plain(r) for r in gathered]
        return {
            "format": FORMAT,
            "kit": self.task.kit,
            "step": self.step,
            "micro": self.micro,
            "epoch": self.micro / self.batches_per_epoch,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rngs if self.world > 1 else rngs[0],
            **self.run.state_dict(),
            "metrics": jsonable(self.last_metrics),
            "hooks": [h.state_dict() for h in self.hooks],
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "config": to_dict(self.cfg),
            "world_size": self.world,
        }

    def save(self, name: str = "last.pt") -> None:
        state = self.state_dict()  # every rank joins the RNG gather
        for path in self.run.save(state, name):
            for hook in self.hooks:
                hook.after_checkpoint(self, str(path))
        dist.barrier()

    # -- loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the best evaluation's metrics."""
        self.run.open(self.step)
        finished = False
        try:
            result = self._fit()
            finished = True
            return result
        except KeyboardInterrupt:
            self._save_at_interrupt()
            raise
        finally:
            self.run.close()
            if not finished:
                self.run.discard_if_unsaved()

    def _save_at_interrupt(self) -> None:
        """Ctrl-C: keep the work done so far in ``last.pt`` (at the last whole optimizer
        step) so ``--resume`` continues from there; a run with no step keeps nothing."""
        if self.world > 1 or self.step == 0:
            return
        self.micro -= self.micro % self.tc.grad_accum  # a half-accumulated step is redone
        self.optimizer.zero_grad(set_to_none=True)
        self.save("last.pt")
        log.info("interrupted at step %d: saved %s", self.step, self.out_dir / "last.pt")

    def _fit(self) -> dict[str, Any]:
        tc = self.tc
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info(
                "train %s: %s steps (%d batches/epoch x %d proc, batch %d, accum %d), "
                "%.2fM params, device %s, amp %s, out %s%s",
                self.task.kit,
                "budget-fitted" if self.total_steps == PROVISIONAL_STEPS else self.total_steps,
                self.batches_per_epoch,
                self.world,
                tc.batch_size,
                tc.grad_accum,
                n_params / 1e6,
                self.device,
                self.amp_dtype or "off",
                self.out_dir,
                f", resumed at step {self.step}" if self.resume else "",
            )
            if self.budget is not None:
                self._log_budget_start()
        for hook in self.hooks:
            hook.before_train(self)
        self.model.train()
        bar = progress(
            total=None if self.total_steps == PROVISIONAL_STEPS else self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            enabled=tc.progress,
        )
        t0, seen = time.perf_counter(), 0
        start_step = self.step
        self._reset_window()
        if self.budget is not None:
            self.budget.start()
            spent = self.resume and self.budget.remaining() <= 0
            if dist.broadcast_object(spent):  # every rank follows rank 0's clock
                log.info("time budget: already spent at step %d; nothing left to train", self.step)
                self._end_now()
        while self.step < self.total_steps and not self.stop_reason:
            epoch, within = divmod(self.micro, self.batches_per_epoch)
            self.sampler.set_epoch(epoch, within)
            announce_epoch(self.model, epoch)
            for batch in self.loader:
                seen += self._micro_step(batch) * self.world
                if self.micro % tc.grad_accum:
                    continue
                self._optimizer_step()
                bar.update(1)
                if self.step % tc.log_interval == 0 or self.step == self.total_steps:
                    self._log_train(seen, t0, bar)
                for hook in self.hooks:
                    hook.after_step(self)
                if self.budget is not None:
                    self._budget_step(bar)
                self._maybe_eval_and_save()
                if self.step >= self.total_steps or self.stop_reason:
                    break
        bar.close()
        if self.step == start_step and not self.resume:
            raise E2EError("training ran no step: the train split yields no batches")
        result = self._finish()
        for hook in self.hooks:
            hook.after_train(self)
        return result

    def _reset_window(self) -> None:
        """Loss sums of the log window, kept on the device (no host sync per step)."""
        self._window_loss = torch.zeros((), device=self.device)
        self._window_n = 0
        # step of the first non-finite loss in the window; -1 while all are finite
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_parts: dict[str, torch.Tensor] = {}

    def _micro_step(self, batch: Any) -> int:
        """Forward and backward of one micro-batch; returns its sample count."""
        batch = to_device(batch, self.device)
        last = (self.micro + 1) % self.tc.grad_accum == 0
        sync = contextlib.nullcontext()
        if not last and isinstance(self.model, DistributedDataParallel):
            sync = self.model.no_sync()
        with sync:
            with autocast(self.device, self.amp_dtype):
                losses = self.model(batch)
            if not isinstance(losses, dict) or not losses:
                raise TypeError("in training mode the model must return a dict of losses")
            loss = sum(losses.values())
            self._watch(loss.detach(), losses)
            self.scaler.scale(loss / self.tc.grad_accum).backward()
        self.micro += 1
        return _batch_len(batch)

    def _watch(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Add ``loss`` to the window and remember the first non-finite step, on the device.

        Under fp16 loss scaling a non-finite loss is the scaler's business (it skips the
        step), so only runs without a scaler fail on it, at the next log."""
        self._window_loss += loss.float()
        self._window_n += 1
        if self.scaler.is_enabled():
            return
        bad = ~torch.isfinite(loss) & (self._bad_step < 0)
        step = torch.full_like(self._bad_step, self.step)
        self._bad_step = torch.where(bad, step, self._bad_step)
        if not self._bad_parts:
            self._bad_parts = {k: v.detach().float().clone() for k, v in losses.items()}
        else:
            for k, v in losses.items():
                self._bad_parts[k] = torch.where(bad, v.detach().float(), self._bad_parts[k])

    def _optimizer_step(self) -> None:
        if self.tc.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        self.step += 1

    def _log_train(self, seen: int, t0: float, bar: Any) -> None:
        """Read the window's loss (the one host sync of the window) and log it."""
        loss = float(self._window_loss) / max(self._window_n, 1)
        bad_step = int(self._bad_step)
        if bad_step >= 0:
            parts = {k: float(v) for k, v in self._bad_parts.items()}
            raise E2EError(
                f"loss became non-finite at step {bad_step} ({parts}); lower optim.lr, "
                "set train.clip_grad_norm, or check the data for bad values"
            )
        self._reset_window()
        if not self.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log.info(
            "step %d/%s loss %.4f lr %.3e %.1f samples/s",
            self.step,
            "?" if self.total_steps == PROVISIONAL_STEPS else self.total_steps,
            loss,
            lr,
            rate,
        )
        self.run.log_scalars({"loss": loss, "lr": lr, "samples_per_s": rate}, self.step)

    def _eval_due(self) -> bool:
        if self.step >= self.total_steps:
            return True
        if self.tc.eval_interval:
            return self.step % self.tc.eval_interval == 0
        before = (self.micro - self.tc.grad_accum) // self.batches_per_epoch
        return self.micro // self.batches_per_epoch > before

    def _maybe_eval_and_save(self) -> None:
        start = self.budget.clock() if self.budget is not None else 0.0
        evaluated = saved = False
        if self._eval_due():
            self.evaluate_now()
            evaluated = True
        save_due = self.tc.save_interval and self.step % self.tc.save_interval == 0
        if evaluated or save_due or self.step >= self.total_steps or self.stop_reason:
            self.save("last.pt")
            saved = True
        if self.budget is not None and (evaluated or saved):
            spent = self.budget.clock() - start
            self.budget.overhead(spent, evaluated=evaluated, saved_only=saved and not evaluated)

    # -- time budget ------------------------------------------------------------------------
    def _log_budget_start(self) -> None:
        budget = self.budget
        assert budget is not None
        bound = budget.upper_bound
        log.info(
            "time budget %s (%s left): the step count is fitted after the first epoch or %d%% "
            "of the budget%s",
            format_duration(budget.seconds),
            format_duration(budget.remaining()),
            round(PROBE_PERCENT),
            f", at most {bound} steps (train.epochs/max_steps)" if bound is not None else "",
        )

    def _budget_step(self, bar: Any) -> None:
        """After an optimizer step, before its evaluation: stop here, or fit the step count.

        Under DDP rank 0 decides and every rank follows (checked each ``log_interval`` steps
        once the first plan is made, so the ranks do not meet each step)."""
        budget = self.budget
        assert budget is not None
        budget.step_done()
        ga, bpe = self.tc.grad_accum, self.batches_per_epoch
        epoch_done = (self.micro - ga) // bpe < self.micro // bpe
        every = 1 if self.world == 1 or not self._budget_planned else self.tc.log_interval
        if self.step % every == 0:
            total, horizon = self.total_steps, None
            if self.is_main:
                total, horizon = self._budget_decision(budget, epoch_done, every)
            planned = budget.plans > 0
            if self.world > 1:
                total, horizon, planned = dist.broadcast_object((total, horizon, planned))
            self._budget_planned = planned
            if horizon is not None:  # the LR's first horizon; the loop runs on to the plan
                retime_scheduler(self.scheduler, self.cfg.sched, horizon)
                bar.total = horizon
            if total != self.total_steps:
                self._set_total(total, retime=total > self.step, bar=bar)
        if self.is_main:
            bar.set_description_str(
                f"train (budget {format_duration(budget.remaining())} left)", refresh=False
            )

    def _budget_decision(
        self, budget: TimeBudget, epoch_done: bool, every: int
    ) -> tuple[int, int | None]:
        """Rank 0's (total steps, provisional LR horizon or None) after this step."""
        if budget.must_stop(every):
            log.info(
                "time budget: %s left, too little for more steps and the final evaluation; "
                "stopping at step %d",
                format_duration(budget.remaining()),
                self.step,
            )
            return self.step, None
        if not budget.plan_due(epoch_done, self.step):
            if not budget.horizon_given and self.total_steps == PROVISIONAL_STEPS:
                # the first step's time (warm-up included: pessimistic) gives the LR a rough
                # horizon until the probe's plan
                return self.total_steps, max(budget.plan(self.step, provisional=True), 2)
            return self.total_steps, None
        total = budget.plan(self.step)
        log.info(
            "time budget: %.4gs/step, evaluation %.3gs: %d steps in all (%.4g epochs), %s left",
            budget.step_time or 0.0,
            budget.eval_estimate(),
            total,
            total / budget.steps_per_epoch,
            format_duration(budget.remaining()),
        )
        return total, None

    def _set_total(self, total: int, *, retime: bool, bar: Any = None) -> None:
        self.total_steps = total
        if retime:
            retime_scheduler(self.scheduler, self.cfg.sched, total)
        if bar is not None:
            bar.total = total
            bar.refresh()

    def _end_now(self) -> None:
        """The run ends at this step: evaluate and save it unless that is done already."""
        self.total_steps = self.step
        if self._evaluated_at != self.step:
            self.evaluate_now()
        self.save("last.pt")

    def evaluate_now(self) -> dict[str, Any]:
        """Evaluate on rank 0 (EMA weights if enabled), track best and early stopping."""
        metrics: dict[str, Any] = {}
        improved = False
        self._evaluated_at = self.step
        if self.is_main and self.val_loader is not None:
            model = self.ema.module if self.ema is not None else unwrap(self.model)
            metrics = run_evaluation(
                self.task, model, self.val_loader, self.device, bar=self.tc.progress
            )
            improved = self.run.track(metrics, self.step)
            record = {"step": self.step, "epoch": round(self.micro / self.batches_per_epoch, 4)}
            record.update(metrics)
            self.run.record_eval(record)
            log.info("eval step %d: %s", self.step, _fmt(metrics))
        metrics, improved, stop = dist.broadcast_object((metrics, improved, self.stop_reason))
        self.run.stop_reason = stop
        self.last_metrics = metrics
        if improved:
            self.save("best.pt")
        for hook in self.hooks:
            hook.after_eval(self, metrics)
        return metrics

    def _finish(self) -> dict[str, Any]:
        result = self.run.finish(self.step)
        if self.budget is not None and self.is_main:
            result.update(self._budget_summary())
        dist.barrier()
        return result

    def _budget_summary(self) -> dict[str, Any]:
        """The budget's figures: logged, added to the summary and to ``metrics.json``."""
        assert self.budget is not None
        summary = self.budget.summary(self.step, self.micro / self.batches_per_epoch)
        log.info(
            "time budget %s: used %s, %d steps (%.4g epochs)%s",
            format_duration(summary["time_budget_s"]),
            format_duration(summary["time_used_s"]),
            summary["budget_steps"],
            summary["budget_epochs"],
            ", stopped early to keep time for the final evaluation"
            if self.budget.stopped_early
            else "",
        )
        path = self.out_dir / "metrics.json"
        full = json.loads(path.read_text(encoding="utf-8"))
        full.update(summary)
        atomic_write_json(path, jsonable(full))
        return summary


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict) and batch:
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0]) if not isinstance(batch[0], (int, float)) else len(batch)
    return 1


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key} {value}")
    return ", ".join(parts)
