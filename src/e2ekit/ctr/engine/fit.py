"""``e2ekit ctr train``: the CTR training loop (sync, Hogwild async, DDP, Ray ps) on the core run.

The run folder, logs, metrics, best/early-stop tracking and final metrics are the core's
:class:`~e2ekit.core.engine.run.Run`, as for every kit; this loop only knows what is CTR:
data are streamed files rather than an indexable dataset, the slot table is updated by a
fused row optimizer, and epochs may be Hogwild passes or streaming partitions. Resume is
exact: a checkpoint records the epoch and how many batches of it were trained, and the
shuffled order of an epoch is a function of (seed, epoch).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from e2ekit.core.config import to_dict
from e2ekit.core.engine import dist
from e2ekit.core.engine.checkpoint import capture_rng, load_checkpoint, model_state, restore_rng
from e2ekit.core.engine.env import resolve_device, seed_everything, set_determinism
from e2ekit.core.engine.hooks import Hook, build_hooks
from e2ekit.core.engine.run import RunLoop, RunOptions
from e2ekit.core.errors import CheckpointError, ConfigError, E2EError
from e2ekit.core.fileio import atomic_write_json
from e2ekit.core.logs import jsonable, log
from e2ekit.core.progress import progress
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.splits import estimate_rows, make_stream, split_paths
from e2ekit.ctr.engine.stepper import Stepper, build_model, evaluate

FORMAT = "e2ekit-ctr-ckpt-1"


def default_threads(processes: int) -> int:
    """Cores split evenly over processes (at least one thread each)."""
    return max(1, (torch.get_num_threads() or 1) // max(processes, 1))


# fewer optimizer steps than this in a whole run earns a warning
FEW_STEPS = 10


class CtrTrainer(RunLoop):
    """Builds model, optimizers and run from the config; ``fit()`` trains."""

    def __init__(
        self, cfg: CtrConfig, out_dir: str | Path | None = None, options: RunOptions | None = None
    ) -> None:
        opts = options or RunOptions()
        resume, weights = opts.resume, opts.weights
        self.cfg = cfg
        self.tc = cfg.train
        self.resume = resume
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.tc.mode == "async":
            raise ConfigError(
                "train.mode=async: Hogwild workers share the tables in CPU memory; on CUDA "
                "use train.mode=sync (one GPU) or ddp (torchrun), or set device=cpu"
            )
        if self.device.type == "cuda" and self.tc.mode == "ps":
            raise ConfigError(
                "train.mode=ps: the workers are CPU Ray actors; on CUDA use train.mode=sync "
                "or ddp, or set device=cpu"
            )
        self.distributed = self.tc.mode == "ddp" and dist.env_world_size() > 1
        if self.tc.mode == "ddp" and not self.distributed:
            log.warning("train.mode=ddp without torchrun: training in one process (sync)")
        if self.distributed:
            dist.init_distributed(self.device)
        self.rank, self.world = (dist.rank(), dist.world_size()) if self.distributed else (0, 1)
        self.is_main = self.rank == 0
        self.attach_run(
            cfg,
            out_dir,
            "ctr",
            opts.config_name,
            metric=self.tc.metric or "auc",
            mode=self.tc.metric_mode,
            resume=resume,
            overwrite=opts.overwrite,
            is_main=self.is_main,
            metric_source="ctr evaluation",
            summary_drop=("calibration_bins",),
        )
        if self.tc.mode != "async":  # Hogwild workers set their own; the parent keeps all
            torch.set_num_threads(self.tc.threads or default_threads(self.world))
        set_determinism(cfg.deterministic)
        seed_everything(cfg.seed)
        self.model = build_model(cfg)
        self.stepper = Stepper(
            self.model,
            cfg,
            distributed=self.distributed,
            device=self.device,
            total_steps=self.schedule_steps(),
        )
        self.hooks: list[Hook] = build_hooks([h.model_dump() for h in self.tc.hooks])
        self.publisher: Any = None
        self._published_step: int | None = None
        if cfg.export.snapshots is not None and self.is_main:
            from e2ekit.ctr.export import Publisher

            folder = self.out_dir / cfg.export.snapshots
            self.publisher = Publisher(folder, cfg, self.stepper.width)
            self.stepper.track_changes()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.rows_seen = 0
        self.last_metrics: dict[str, Any] = {}
        self.stream_state: dict[str, Any] = {"trained": []}
        self.pool: Any = None
        self.ps_state: dict[str, Any] | None = None  # ps mode: what the servers hold
        self._eval_step = -1
        self.evals_kept = 0  # on resume: evaluations in metrics.jsonl up to this step stay
        self._window_loss = torch.zeros((), device=self.device)
        self._window_n = 0
        self.from_weights = bool(weights) and not resume  # a trained model from the start
        self.parse_seconds: float | None = None  # data.cache: seconds spent parsing or finding
        if resume:
            self._load_resume()
        elif weights:
            self.load_weights(weights)

    def schedule_steps(self) -> int | None:
        """Optimizer steps the LR schedule spans (per Hogwild worker in async mode); None
        for a constant LR. Without ``train.max_steps`` it is estimated from the data size."""
        sched = self.cfg.sched
        if sched.type == "constant" and not (sched.warmup_steps or sched.warmup_ratio):
            return None
        if self.tc.max_steps:
            total = self.tc.max_steps
        else:
            rows = estimate_rows(self.train_paths) if self.train_paths else None
            if not rows:
                raise ConfigError(
                    f"sched.type={sched.type}: cannot size the schedule from data.train; "
                    "set train.max_steps"
                )
            per_step = self.tc.batch_size * self.world
            total = (self.tc.epochs or 1) * math.ceil(rows / per_step)
        if self.tc.mode == "async":
            total = math.ceil(total / self.tc.workers)
        return max(1, total)

    # -- data (resolved lazily: built-in data are generated only when used) ----------------
    @functools.cached_property
    def train_paths(self) -> str | None:
        return split_paths(self.cfg, "train")

    @functools.cached_property
    def val_paths(self) -> str | None:
        return split_paths(self.cfg, "val") if self.is_main else None

    # -- state ------------------------------------------------------------------------------
    def _load_resume(self) -> None:
        ckpt = load_checkpoint(self.run.last_checkpoint(), map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.stepper.load_state_dict(ckpt["stepper"])
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.batch_in_epoch, self.rows_seen = int(ckpt["batch_in_epoch"]), int(ckpt["rows_seen"])
        self.run.load_state_dict(ckpt)
        for hook, state in zip(self.hooks, ckpt.get("hooks", []), strict=False):
            hook.load_state_dict(state)
        self.last_metrics = ckpt.get("metrics") or {}
        self.stream_state = ckpt.get("stream") or {"trained": []}
        self.ps_state = ckpt.get("ps")
        # the last evaluation the checkpoint includes: it is not redone, and only evaluations
        # logged after it are (a save at an evaluation's step may precede that evaluation)
        eval_step = ckpt.get("eval_step")
        if eval_step is not None:
            self._eval_step = int(eval_step)
        self.evals_kept = self.step if eval_step is None else int(eval_step)
        restore_rng(ckpt["rng"])

    def load_weights(self, weights: str | Path) -> None:
        """Start from another run's model (streaming from an earlier model, fine-tuning)."""
        ckpt = load_checkpoint(weights, map_location=self.device)
        try:
            self.model.load_state_dict(model_state(ckpt))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"--weights {weights} does not fit this model: {first}") from None
        if "stepper" in ckpt:
            try:
                self.stepper.load_state_dict(ckpt["stepper"])
            except (ValueError, KeyError) as exc:
                log.warning("--weights %s: optimizer state not reused (%s)", weights, exc)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kit": "ctr",
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rows_seen": self.rows_seen,
            "model": self.model.state_dict(),
            "stepper": self.stepper.state_dict(),
            **self.run.state_dict(),
            "metrics": jsonable(self.last_metrics),
            "stream": self.stream_state,
            "eval_step": self._eval_step,
            "hooks": [h.state_dict() for h in self.hooks],
            "rng": capture_rng(),
            "config": to_dict(self.cfg),
            **({"ps": self.ps_state} if self.ps_state is not None else {}),
        }

    def save(self, *names: str) -> None:
        if not self.is_main:
            return
        for path in self.run.save(self.state_dict(), *names):
            for hook in self.hooks:
                hook.after_checkpoint(self, str(path))

    def publish(self, tag: str = "") -> dict[str, Any] | None:
        """Publish the model as a servable version into ``export.snapshots`` (rank 0, once
        per step): ``step-<step>`` (``-<partition>`` when streaming). None when off."""
        if self.publisher is None or self.step == self._published_step or self.step == 0:
            return None
        version = f"step-{self.step}" + (f"-{tag}" if tag else "")
        entry = self.publisher.publish(
            self.model,
            version,
            self.stepper.rows.touched_rows(),
            self.stepper.changed,
            meta={"step": self.step, "epoch": self.epoch},
        )
        if self.stepper.changed is not None:
            self.stepper.changed.zero_()  # in place: Hogwild workers share this mask
        self._published_step = self.step
        return dict(entry)

    # -- run folder -------------------------------------------------------------------------
    def open_run_dir(self, evals_kept: int | None = None) -> None:
        """Open the run folder; on resume, evaluations logged after step ``evals_kept``
        (default: the checkpoint's step) are dropped from ``metrics.jsonl``."""
        self.run.open(self.step if evals_kept is None else evals_kept)
        for hook in self.hooks:
            hook.before_train(self)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.run.close()

    # -- training ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train ``train.epochs`` passes (or ``max_steps``), evaluating and checkpointing."""
        if self.train_paths is None:
            raise ConfigError("no training data: set data.train (a file, folder or glob)")
        self.open_run_dir(self.evals_kept if self.resume else None)
        finished = False
        try:
            self._log_start(self.train_paths)
            self.prepare_data()  # before any worker starts and before any pass is timed
            if self.tc.mode in ("async", "ps"):
                self.start_pool()  # spawn once, before any timing
            epochs = self.tc.epochs or 1
            pass_rows, pass_seconds = 0, 0.0
            while self.epoch < epochs and not self._steps_done() and not self.stop_reason:
                stats = self.train_pass(
                    self.train_paths, epoch=self.epoch, skip=self.batch_in_epoch
                )
                pass_rows += int(stats["rows"])
                pass_seconds += float(stats["seconds"])
                if self.is_main:
                    log.info(
                        "pass %d: %d rows in %.1fs, %.0f samples/s",
                        self.epoch + 1,
                        stats["rows"],
                        stats["seconds"],
                        stats["rows"] / max(float(stats["seconds"]), 1e-9),
                    )
                if self.step == 0:  # before any checkpoint: an untrained model is no run
                    raise E2EError(self._no_rows_message())
                if self._steps_done() and self.batch_in_epoch:
                    break  # max_steps hit mid-epoch: the final eval below covers it
                self.epoch += 1
                self.batch_in_epoch = 0
                if self._eval_step != self.step:
                    self.evaluate_and_save()
                else:  # eval_interval just evaluated this step: record only the epoch's end
                    self.save("last.pt")
                self.publish()
            if self._eval_step != self.step:  # same decision on every rank
                self.evaluate_and_save()
            self.publish()  # a pass cut short by max_steps
            result = self._finish()
            facts: dict[str, float] = {
                "train_seconds": round(pass_seconds, 3),
                "train_samples_per_s": round(pass_rows / max(pass_seconds, 1e-9), 1),
            }
            if self.parse_seconds is not None:
                facts["parse_seconds"] = round(float(self.parse_seconds), 3)
            result = self._record_run_facts(result, facts)
            for hook in self.hooks:
                hook.after_train(self)
            finished = True
            return result
        except KeyboardInterrupt:
            if self.step and self.tc.mode not in ("async", "ps") and not self.distributed:
                self.save("last.pt")
                log.info("interrupted at step %d: saved %s", self.step, self.out_dir / "last.pt")
            raise
        finally:
            self.close()
            if not finished:
                self.run.discard_if_unsaved()

    def prepare_data(self) -> None:
        """``data.cache``: parse every file of the train, val and test splits into the cache
        (or find it there), once, in the main process, before workers start and before the
        first pass's clock; ``parse_seconds`` records the time it took."""
        if not self.cfg.data.cache:
            return
        from e2ekit.ctr.data.cache import cached_entries

        t0 = time.perf_counter()
        if self.is_main:
            for split in ("train", "val", "test"):
                paths = split_paths(self.cfg, split)
                if paths is not None:
                    cached_entries(self.cfg, paths, announce=True)
        if self.distributed:
            dist.barrier()  # the other ranks read the entries rank 0 published
        self.parse_seconds = time.perf_counter() - t0
        if self.is_main:
            log.info("data.cache: data ready in %.1fs (parse_seconds)", self.parse_seconds)

    def _record_run_facts(self, result: dict[str, Any], facts: dict[str, float]) -> dict[str, Any]:
        """Add the passes' training time and rate (parsing with ``data.cache`` apart) to the
        run's summary and ``metrics.json``, where a benchmark reads them."""
        if not self.is_main:
            return result
        path = self.out_dir / "metrics.json"
        if path.is_file():
            record = json.loads(path.read_text())
            record.update(facts)
            atomic_write_json(path, record)
        return {**result, **facts}

    def _steps_done(self) -> bool:
        return self.tc.max_steps is not None and self.step >= self.tc.max_steps

    def _log_start(self, paths: str) -> None:
        if not self.is_main:
            return
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "train ctr %s (%s, %d proc x %d threads, device %s, amp %s): %.2fM params "
            "(table %d rows x %d), batch %d, data %s, out %s%s",
            self.cfg.model.type,
            self.tc.mode,
            {"async": self.tc.workers, "ps": self.cfg.ps.workers}.get(self.tc.mode, self.world),
            torch.get_num_threads(),
            self.device,
            self.stepper.amp_dtype or "off",
            n_params / 1e6,
            self.stepper.table.shape[0],
            self.stepper.width,
            self.tc.batch_size,
            paths,
            self.out_dir,
            f", resumed at step {self.step}" if self.resume else "",
        )
        self._warn_few_steps(paths)

    def _warn_few_steps(self, paths: str) -> None:
        """Say so when the whole run is only a handful of optimizer steps (a big batch on
        small data): it would end at once with an untrained model and no word why."""
        if self.tc.max_steps:
            return
        rows = estimate_rows(paths)
        if not rows:
            return
        per_step = self.tc.batch_size * self.world
        per_epoch = math.ceil(rows / per_step)
        total = (self.tc.epochs or 1) * per_epoch
        if total < FEW_STEPS:
            log.warning(
                "data.train has about %d rows: at train.batch_size=%d an epoch is %d optimizer "
                "step(s), %d in all; that is too few to learn from. Lower train.batch_size "
                "(e.g. %d) or raise train.epochs",
                rows,
                self.tc.batch_size,
                per_epoch,
                total,
                max(32, 2 ** int(math.log2(max(1, rows // 50)))),
            )

    def train_pass(
        self, paths: str | list[str], *, epoch: int, skip: int = 0, desc: str = "train"
    ) -> dict[str, Any]:
        """One pass over ``paths`` (skipping ``skip`` batches already trained); returns stats."""
        if self.tc.mode in ("async", "ps"):
            return self._async_pass(paths, epoch=epoch, desc=desc)
        shard = (self.rank, self.world) if self.distributed else None
        stream = make_stream(
            self.cfg,
            paths,
            train=True,
            epoch=epoch,
            shard=shard,
            drop_last=self.distributed or self.tc.drop_last,
        )
        total = estimate_rows(paths)
        bar = progress(
            total=total, desc=desc, unit="row", unit_scale=True, enabled=self.tc.progress
        )
        t0, rows = time.perf_counter(), 0
        index = -1
        self.model.train()
        it = iter(stream)
        try:
            while True:
                batch = next(it, None)
                if self.distributed and not dist_all_have(batch is not None, self.device):
                    break  # ranks stop together; at most world-1 batches left untrained
                if batch is None:
                    break
                index += 1
                n = len(batch["label"]) * self.world
                bar.update(n)
                if index < skip:
                    continue
                self._window_loss += self.stepper.step(batch)  # stays on the device
                self._window_n += 1
                self.step += 1
                self.batch_in_epoch = index + 1
                self.rows_seen += n
                rows += n
                if self.step % self.tc.log_interval == 0:
                    self._log_train(rows, t0, bar)
                for hook in self.hooks:
                    hook.after_step(self)
                if self.tc.eval_interval and self.step % self.tc.eval_interval == 0:
                    self.evaluate_and_save()
                elif self.tc.save_interval and self.step % self.tc.save_interval == 0:
                    self.save("last.pt")
                if self._steps_done() or self.stop_reason:
                    break
        finally:
            bar.close()
            close = getattr(it, "close", None)
            if close is not None:
                close()
        seconds = time.perf_counter() - t0
        stats = stream.stats
        if stats.bad_rows and self.is_main:
            log.warning("%s", stats.summary())
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / max(seconds, 1e-9),
            "bad_rows": stats.bad_rows,
        }

    def start_pool(self) -> None:
        """Spawn the Hogwild workers or the ps actors now (else the first pass does it)."""
        if self.pool is not None:
            return
        if self.tc.mode == "ps":
            try:
                from e2ekit.ctr.ps.pool import PsPool
            except ImportError as exc:
                raise ConfigError(
                    f"train.mode=ps runs on Ray, which is not installed ({exc}); "
                    "pip install 'e2ekit[ps]'"
                ) from None
            self.pool = PsPool(self)
            return
        from e2ekit.ctr.engine.hogwild import HogwildPool

        self.pool = HogwildPool(self)

    def _async_pass(self, paths: str | list[str], *, epoch: int, desc: str) -> dict[str, Any]:
        if self.pool is None:
            self.start_pool()
        stats = self.pool.train(paths, epoch=epoch, step=self.step, desc=desc)
        self.step += stats["steps"]
        self.rows_seen += stats["rows"]
        self.batch_in_epoch = 0
        if stats["bad_rows"]:
            log.warning(
                "%d malformed rows skipped (first: %s)", stats["bad_rows"], stats["first_bad"]
            )
        return stats

    def _log_train(self, rows: int, t0: float, bar: Any) -> None:
        """Read the window's mean loss (one host sync per log interval) and log it."""
        loss = float(self._window_loss) / max(self._window_n, 1)
        self._window_loss.zero_()
        self._window_n = 0
        if not math.isfinite(loss) and not self.stepper.scaler.is_enabled():
            raise E2EError(
                f"loss became {loss} by step {self.step}; lower optim.lr or "
                "sparse_optim.lr, set train.clip_grad_norm, or check the data for bad values"
            )
        if not self.is_main:
            return
        rate = rows / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}")
        lr = self.stepper.dense_opt.param_groups[0]["lr"]
        log.info("step %d loss %.4f lr %.3e %.0f samples/s", self.step, loss, lr, rate)
        self.run.log_scalars({"loss": loss, "lr": lr, "samples_per_s": rate}, self.step)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate_paths(self, paths: str | list[str], desc: str = "eval") -> dict[str, Any]:
        stream = make_stream(self.cfg, paths, train=False)
        return evaluate(
            self.model, stream, desc=desc, total=estimate_rows(paths), bar=self.tc.progress
        )

    def evaluate_and_save(self, record_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate on val (rank 0), log it, keep best.pt and last.pt current."""
        metrics: dict[str, Any] = {}
        improved = False
        self._eval_step = self.step
        if self.is_main and self.val_paths is not None:
            metrics = self.evaluate_paths(self.val_paths)
            improved = self.run.track(metrics, self.step)
            record = {"step": self.step, "epoch": self.epoch, "rows_seen": self.rows_seen}
            record.update(record_extra or {})
            record.update(metrics)
            self.run.record_eval(record)
            log.info("eval step %d: %s", self.step, fmt_metrics(metrics))
        if self.distributed:
            stop = dist.broadcast_object(self.stop_reason)
            self.run.stop_reason = stop
        self.last_metrics = metrics
        # best.pt first: a kill between the two saves must not leave a last.pt whose best
        # record names weights that best.pt does not hold (a resume would not rewrite them)
        self.save(*(("best.pt", "last.pt") if improved else ("last.pt",)))
        for hook in self.hooks:
            hook.after_eval(self, metrics)
        if self.distributed:
            dist.barrier()
        return metrics

    def _finish(self) -> dict[str, Any]:
        result = self.run.finish(self.step)
        if self.step == 0 and not self.resume:
            raise E2EError(self._no_rows_message())
        return result

    def _no_rows_message(self) -> str:
        return (
            f"training ran no step: data.train ({self.train_paths}) yields no valid rows "
            "(the warning above names the first malformed lines)"
        )


def dist_all_have(flag: bool, device: torch.device) -> bool:
    """True when every rank still has a batch (one tiny all-reduce per step)."""
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t)
    return int(t) == 0


def fmt_metrics(metrics: dict[str, Any]) -> str:
    keys = ("auc", "logloss", "calibration", "samples", "eval_seconds")
    parts = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)
