"""The training loop every kit uses: short step, explicit eval/checkpoint, few hooks.

Correctness-critical math lives only here: gradient accumulation normalisation,
AMP loss scaling and unscale-before-clip, DDP ``no_sync`` on accumulation steps,
exact resume (weights, optimizer, scheduler, scaler, EMA, step, data order, RNG).
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from e2ekit.core.config import save_config, to_dict
from e2ekit.core.engine import dist
from e2ekit.core.engine.amp import autocast, make_scaler, resolve_amp
from e2ekit.core.engine.best import (
    best_record,
    defined,
    is_better,
    require_metric,
    write_final_metrics,
)
from e2ekit.core.engine.checkpoint import (
    FORMAT,
    atomic_torch_save,
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
from e2ekit.core.engine.optim import build_optimizer, build_scheduler
from e2ekit.core.engine.sampler import ResumableBatchSampler, SeededDataset
from e2ekit.core.engine.task import Task
from e2ekit.core.errors import CheckpointError, ConfigError, E2EError
from e2ekit.core.logs import MetricsWriter, add_file_log, jsonable, log, remove_handler
from e2ekit.core.progress import progress


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_run_dir(kit: str, config_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / kit / config_name / stamp


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
            ds, batch_sampler=batches, num_workers=tc.num_workers, collate_fn=task.collate_fn(split)
        )
    return DataLoader(
        ds,
        batch_size=size,
        shuffle=False,
        num_workers=tc.num_workers,
        collate_fn=task.collate_fn(split),
        generator=torch.Generator().manual_seed(0),
    )


def run_evaluation(task: Task, model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    was_training = model.training
    model.eval()
    bar = progress(loader, total=len(loader), desc="eval", unit="batch")
    try:
        with torch.inference_mode():
            metrics = task.evaluate(model, bar, device)
    finally:
        bar.close()
        model.train(was_training)
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}


class Trainer:
    """Builds everything from ``task.cfg`` before touching ``out_dir``, then trains."""

    def __init__(
        self,
        task: Task,
        out_dir: str | Path | None = None,
        *,
        config_name: str = "config",
        resume: bool = False,
        weights: str | Path | None = None,
    ) -> None:
        self.task = task
        self.cfg = task.cfg
        self.tc = task.cfg.train
        self.resume = resume
        self.device = resolve_device(self.cfg.device)
        dist.init_distributed(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.out_dir = Path(out_dir) if out_dir else default_run_dir(task.kit, config_name)
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
        # A private generator keeps DataLoader worker seeding off the global RNG stream.
        self.loader = DataLoader(
            SeededDataset(train_ds, self.cfg.seed),
            batch_sampler=self.sampler,
            num_workers=self.tc.num_workers,
            collate_fn=task.collate_fn("train"),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        self.val_loader = eval_loader(task, "val") if self.is_main else None
        self.batches_per_epoch = len(self.sampler)
        if self.tc.max_steps:
            self.total_steps = self.tc.max_steps
        else:
            micro = (self.tc.epochs or 1) * self.batches_per_epoch
            self.total_steps = max(1, micro // self.tc.grad_accum)

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
        self.metric_name = self.tc.metric or task.default_metric
        self.metric_mode = self.tc.metric_mode if self.tc.metric else task.metric_mode

        self.step = 0
        self.micro = 0
        self.best: dict[str, Any] | None = None
        self.bad_evals = 0
        self.last_metrics: dict[str, Any] = {}
        self.stop_reason = ""
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

    # -- state ------------------------------------------------------------------------
    def _load_resume_state(self) -> None:
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"--resume: {path} does not exist; nothing to resume from")
        ckpt = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.step, self.micro = int(ckpt["step"]), int(ckpt["micro"])
        self.best = ckpt.get("best")
        self.bad_evals = int(ckpt.get("bad_evals", 0))
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
            "best": self.best,
            "bad_evals": self.bad_evals,
            "metrics": jsonable(self.last_metrics),
            "hooks": [h.state_dict() for h in self.hooks],
            "config": to_dict(self.cfg),
            "world_size": self.world,
        }

    def save(self, name: str = "last.pt") -> None:
        state = self.state_dict()  # every rank joins the RNG gather
        if self.is_main:
            path = self.out_dir / name
            atomic_torch_save(state, path)
            for hook in self.hooks:
                hook.after_checkpoint(self, str(path))
        dist.barrier()

    # -- loop ---------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            save_config(self.cfg, self.out_dir / "config.yaml")
        self._file_log = add_file_log(self.out_dir / "train.log")
        self.writer = MetricsWriter(self.out_dir, self.tc.tensorboard)
        if self.resume:
            self.writer.truncate_after(self.step)

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the best evaluation's metrics."""
        self._file_log = None
        self.writer: MetricsWriter | None = None
        self._prepare_run_dir()
        try:
            return self._fit()
        finally:
            if self.writer is not None:
                self.writer.close()
            remove_handler(self._file_log)

    def _fit(self) -> dict[str, Any]:
        tc = self.tc
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info(
                "train %s: %d steps (%d batches/epoch x %d proc, batch %d, accum %d), "
                "%.2fM params, device %s, amp %s, out %s%s",
                self.task.kit,
                self.total_steps,
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
        for hook in self.hooks:
            hook.before_train(self)
        self.model.train()
        bar = progress(total=self.total_steps, initial=self.step, desc="train", unit="step")
        t0, seen, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
        start_step = self.step
        while self.step < self.total_steps and not self.stop_reason:
            epoch, within = divmod(self.micro, self.batches_per_epoch)
            self.sampler.set_epoch(epoch, within)
            for batch in self.loader:
                loss_value, n = self._micro_step(batch)
                seen += n * self.world
                window_loss += loss_value
                window_n += 1
                if self.micro % tc.grad_accum:
                    continue
                self._optimizer_step()
                bar.update(1)
                if self.step % tc.log_interval == 0 or self.step == self.total_steps:
                    self._log_train(window_loss / max(window_n, 1), seen, t0, bar)
                    window_loss, window_n = 0.0, 0
                for hook in self.hooks:
                    hook.after_step(self)
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

    def _micro_step(self, batch: Any) -> tuple[float, int]:
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
            if not torch.isfinite(loss) and not self.scaler.is_enabled():
                parts = {k: float(v) for k, v in losses.items()}
                raise E2EError(
                    f"loss became {float(loss)} at step {self.step} ({parts}); lower optim.lr, "
                    "set train.clip_grad_norm, or check the data for bad values"
                )
            self.scaler.scale(loss / self.tc.grad_accum).backward()
        self.micro += 1
        return float(loss.detach()), _batch_len(batch)

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

    def _log_train(self, loss: float, seen: int, t0: float, bar: Any) -> None:
        if not self.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log.info(
            "step %d/%d loss %.4f lr %.3e %.1f samples/s",
            self.step,
            self.total_steps,
            loss,
            lr,
            rate,
        )
        if self.writer is not None:
            self.writer.scalars({"loss": loss, "lr": lr, "samples_per_s": rate}, self.step)

    def _eval_due(self) -> bool:
        if self.step >= self.total_steps:
            return True
        if self.tc.eval_interval:
            return self.step % self.tc.eval_interval == 0
        before = (self.micro - self.tc.grad_accum) // self.batches_per_epoch
        return self.micro // self.batches_per_epoch > before

    def _maybe_eval_and_save(self) -> None:
        evaluated = False
        if self._eval_due():
            self.evaluate_now()
            evaluated = True
        save_due = self.tc.save_interval and self.step % self.tc.save_interval == 0
        if evaluated or save_due or self.step >= self.total_steps or self.stop_reason:
            self.save("last.pt")

    def evaluate_now(self) -> dict[str, Any]:
        """Evaluate on rank 0 (EMA weights if enabled), track best and early stopping."""
        metrics: dict[str, Any] = {}
        improved = False
        if self.is_main and self.val_loader is not None:
            model = self.ema.module if self.ema is not None else unwrap(self.model)
            metrics = run_evaluation(self.task, model, self.val_loader, self.device)
            improved = self._track_best(metrics)
            record = {"step": self.step, "epoch": round(self.micro / self.batches_per_epoch, 4)}
            record.update(metrics)
            if self.writer is not None:
                self.writer.write_eval(record)
            log.info("eval step %d: %s", self.step, _fmt(metrics))
        metrics, improved, stop = dist.broadcast_object((metrics, improved, self.stop_reason))
        self.stop_reason = stop
        self.last_metrics = metrics
        if improved:
            self.save("best.pt")
        for hook in self.hooks:
            hook.after_eval(self, metrics)
        return metrics

    def _track_best(self, metrics: dict[str, Any]) -> bool:
        require_metric(self.metric_name, metrics)
        value = float(metrics[self.metric_name])
        if defined(value) and is_better(
            self.best, value, self.metric_mode, self.tc.early_stop.min_delta
        ):
            self.best = best_record(self.metric_name, value, self.step, metrics)
            self.bad_evals = 0
            return True
        self.bad_evals += 1
        patience = self.tc.early_stop.patience
        if patience and self.bad_evals >= patience:
            self.stop_reason = f"early stop: no {self.metric_name} gain in {patience} evaluations"
            log.info(self.stop_reason)
        return False

    def _finish(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.is_main:
            result = write_final_metrics(self.out_dir, self.best, self.step)
        dist.barrier()
        return result


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
