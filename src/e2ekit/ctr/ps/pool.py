"""The ps driver: Ray server and worker actors, units of data from a queue, elastic workers.

``PsPool(trainer)`` starts (or joins, ``ps.address``) Ray, puts ``ps.servers`` row shards and
one dense server up, loads them from the trainer (its model, optimizer and schedule state, and
the ``ps`` entry of a resumed checkpoint), and starts ``ps.workers`` workers. ``train(paths,
epoch)`` is one pass: files are cut into units (byte ranges of about ``ps.unit_mb``, whole
lines) handed out one at a time to whichever worker is free, and the pass ends when every unit
is done. A unit is recorded in a ledger (unit -> worker) once, when its worker reports it done
(after all its pushes were applied).

A worker that dies does not stop the pass: its in-flight unit goes back to the queue and a
replacement starts (up to ``ps.max_worker_restarts``); everything other workers pushed lives on
the servers. The honest limit: pushes the dead worker made for its unfinished unit stay
applied (at most one unit's worth) and another worker reads that unit again.

After every pass the shards' rows and optimizer state and the dense weights, optimizer and
schedule are copied back into the trainer (rows not held read zeros), so evaluation,
checkpoints, export and snapshot publishing work as in every other mode.
"""

from __future__ import annotations

import collections
import math
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from e2ekit.core import errors
from e2ekit.core.logs import log
from e2ekit.core.progress import progress
from e2ekit.ctr.data.formats import list_data_files
from e2ekit.ctr.data.splits import estimate_rows
from e2ekit.ctr.ps.config import ps_problems
from e2ekit.ctr.ps.servers import DenseServer, RowShard, shard_of, tensor
from e2ekit.ctr.ps.worker import PsWorker

_POLL_S = 0.25
_GROW_EVERY_S = 2.0  # how often a pass asks Ray for free CPUs (ps.max_workers)
_COMPRESSED = (".gz", ".bz2", ".lz4", ".zst")
LOCAL_OBJECT_STORE = 200 << 20  # rows travel per batch; a small store is plenty

Unit = tuple[str, int, int]  # (file, part, parts)


def connect(address: str | None, cpus: int) -> bool:
    """Join ``address``, or start a small local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local instance
        ray.init(
            num_cpus=max(os.cpu_count() or 1, cpus),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            log_to_driver=False,
        )
    return True


def make_units(paths: str | list[str], unit_mb: float, csv: bool = False) -> list[Unit]:
    """Every file of ``paths`` cut into byte ranges of about ``unit_mb`` (the line readers
    parse only their range); compressed and CSV files go whole."""
    unit_bytes = max(1, int(unit_mb * (1 << 20)))
    units: list[Unit] = []
    for f in list_data_files(paths):
        whole = csv or f.suffix.lower() in (*_COMPRESSED, ".csv")
        parts = 1 if whole else max(1, math.ceil(f.stat().st_size / unit_bytes))
        units += [(str(f), i, parts) for i in range(parts)]
    return units


def unit_name(unit: Unit) -> str:
    path, part, parts = unit
    return f"{Path(path).name}#{part + 1}/{parts}" if parts > 1 else Path(path).name


class PsPool:
    """Servers and workers on Ray; ``train(paths, epoch=...)`` is one pass (like HogwildPool)."""

    def __init__(self, trainer: Any) -> None:
        cfg = trainer.cfg
        problems = ps_problems(cfg)
        if problems:
            raise errors.ConfigError(problems[0])
        self.trainer, self.cfg, self.ps = trainer, cfg, cfg.ps
        self.started_ray = connect(self.ps.address, self.ps.workers)
        self.cfg_dict = cfg.model_dump(mode="json")
        table = trainer.model.tables.embedding.weight
        self.num_keys, self.width = int(table.shape[0]), int(table.shape[1])
        so = cfg.sparse_optim
        sparse = {
            "type": so.type,
            "lr": so.lr or cfg.optim.lr,
            "eps": so.eps,
            "initial_accumulator": so.initial_accumulator,
            "weight_decay": so.weight_decay,
        }
        shard_cls = ray.remote(num_cpus=0)(RowShard)
        self.shards = [
            shard_cls.remote(
                i,
                self.ps.servers,
                self.num_keys,
                self.width,
                sparse,
                betas=tuple(cfg.optim.betas),
                admit_after=self.ps.admit_after,
                evict_after_s=self.ps.evict_after_s,
                seed=cfg.seed,
            )
            for i in range(self.ps.servers)
        ]
        self.dense = ray.remote(num_cpus=0)(DenseServer).remote(
            self.cfg_dict, trainer.stepper.total_steps
        )
        self.held = torch.empty(0, dtype=torch.int64)  # keys the trainer's table holds
        self._load_from_trainer()
        self.threads = cfg.train.threads or max(1, torch.get_num_threads() // self.ps.workers)
        self.workers: dict[str, Any] = {}
        self.idle: list[str] = []
        self.started = 0
        self.restarts = 0
        self.joined = 0
        self._kill_after: int | None = None
        for _ in range(self.ps.workers):
            self._start_worker()
        ray.get([w.ready.remote() for w in self.workers.values()])  # start-up before timing
        log.info(
            "ps: %d row shards + 1 dense server, %d workers x %d threads on Ray%s",
            self.ps.servers,
            self.ps.workers,
            self.threads,
            f" at {self.ps.address}" if self.ps.address else " (local)",
        )

    # -- actors ---------------------------------------------------------------------------
    def _start_worker(self) -> str:
        name = f"worker-{self.started}"
        self.workers[name] = (
            ray.remote(num_cpus=1)(PsWorker)
            .options(max_restarts=0)
            .remote(
                name,
                self.cfg_dict,
                self.shards,
                self.dense,
                self.threads,
                self.cfg.seed * 1000 + self.started,
            )
        )
        self.started += 1
        self.idle.append(name)
        return name

    def kill_worker_after(self, units: int) -> None:
        """Kill a busy worker that finished a unit once ``units`` units of the pass are done
        (0: any busy worker at once), to show a run survives it."""
        self._kill_after = units

    # -- state ----------------------------------------------------------------------------
    def _load_from_trainer(self) -> None:
        """Put the trainer's rows, dense weights and optimizer state on the servers: a resumed
        checkpoint's held rows (its ``ps`` entry), a ``--weights`` model's trained rows, or
        nothing (rows are created as they are first used)."""
        t = self.trainer
        meta = getattr(t, "ps_state", None) or {}
        stepper = t.stepper
        dense = {
            "weights": torch.nn.utils.parameters_to_vector(t.model.dense_parameters())
            .detach()
            .cpu()
            .numpy(),
            "optimizer": stepper.dense_opt.state_dict(),
            "scheduler": stepper.scheduler.state_dict() if stepper.scheduler else None,
            "version": int(meta.get("version", t.step)),
        }
        calls = [self.dense.load.remote(dense)]
        if "held" in meta:
            keys = torch.as_tensor(meta["held"], dtype=torch.int64)
        elif t.resume or getattr(t, "from_weights", False):
            keys = stepper.rows.touched_rows().cpu()
        else:
            keys = torch.empty(0, dtype=torch.int64)
        pending = meta.get("pending") or {}
        pend_keys = torch.as_tensor(pending.get("keys", []), dtype=torch.int64)
        pend_counts = torch.as_tensor(pending.get("counts", []), dtype=torch.int32)
        steps = meta.get("steps") or [float(stepper.rows.state["step"])] * self.ps.servers
        if len(steps) != self.ps.servers:  # resumed with another ps.servers: same totals
            steps = [max(steps)] * self.ps.servers
        table = t.model.tables.embedding.weight.detach().cpu()
        state = {k: v.cpu() for k, v in stepper.rows.state.items() if k != "step"}
        owner, pend_owner = shard_of(keys, self.ps.servers), shard_of(pend_keys, self.ps.servers)
        for s, shard in enumerate(self.shards):
            mine = keys[owner == s]
            waiting = pend_owner == s
            calls.append(
                shard.load.remote(
                    {
                        "keys": mine,
                        "rows": table[mine],
                        "state": {k: v[mine] for k, v in state.items()},
                        "step": steps[s],
                        "pending": {"keys": pend_keys[waiting], "counts": pend_counts[waiting]},
                    }
                )
            )
        ray.get(calls)
        self.held = keys

    def sync_to_trainer(self) -> dict[str, Any]:
        """Copy the servers' state into the trainer's model and optimizers; returns counts."""
        t = self.trainer
        evicted = 0
        if self.ps.evict_after_s is not None:
            evicted = sum(ray.get([s.evict.remote() for s in self.shards]))
        parts = ray.get([s.export.remote() for s in self.shards])
        dense = ray.get(self.dense.export.remote())
        table = t.model.tables.embedding.weight
        rows_opt = t.stepper.rows
        keys = torch.cat([torch.as_tensor(p["keys"]) for p in parts]).to(table.device)
        with torch.no_grad():
            table.zero_()  # a key the servers do not hold reads zeros
            table[keys] = torch.cat([p["rows"] for p in parts]).to(table.device)
            for name, value in rows_opt.state.items():
                if name == "step":
                    value.fill_(max(p["step"] for p in parts))
                    continue
                value.fill_(rows_opt.initial_accumulator if name == "sum" else 0.0)
                value[keys] = torch.cat([p["state"][name] for p in parts]).to(value.device)
            if t.stepper.changed is not None:
                t.stepper.changed[self.held.to(table.device)] = True  # held before: maybe gone
                t.stepper.changed[keys] = True
            flat = tensor(dense["weights"]).to(table.device)
            torch.nn.utils.vector_to_parameters(flat, t.model.dense_parameters())
        t.stepper.dense_opt.load_state_dict(dense["optimizer"])
        if dense["scheduler"] and t.stepper.scheduler is not None:
            t.stepper.scheduler.load_state_dict(dense["scheduler"])
        self.held = keys.cpu()
        pending = [p["pending"] for p in parts if p["pending"]]
        t.ps_state = {
            "version": dense["version"],
            "held": self.held.clone(),
            "steps": [p["step"] for p in parts],
            "pending": {
                "keys": torch.cat([p["keys"] for p in pending]) if pending else torch.empty(0),
                "counts": torch.cat([p["counts"] for p in pending]) if pending else torch.empty(0),
            },
        }
        return {
            "held_rows": int(keys.numel()),
            "evicted_rows": evicted + sum(p["evicted"] for p in parts),
            "version": dense["version"],
        }

    # -- one pass -------------------------------------------------------------------------
    def train(
        self, paths: str | list[str], *, epoch: int, step: int = 0, desc: str = "train"
    ) -> dict[str, Any]:
        """Every unit of ``paths`` trained once by some worker; summed stats and the ledger.
        (``step`` is accepted for the trainer's interface: the dense server counts the
        global steps itself, from the checkpoint's.)"""
        del step
        queue = collections.deque(make_units(paths, self.ps.unit_mb, self._csv()))
        units = len(queue)
        ledger: dict[str, str] = {}
        done: list[dict[str, Any]] = []
        inflight: dict[Any, tuple[str, Unit]] = {}
        base = ray.get(self.dense.progress.remote())
        bar = progress(
            total=estimate_rows(paths),
            desc=desc,
            unit="row",
            unit_scale=True,
            enabled=self.cfg.train.progress,
        )
        t0 = time.perf_counter()
        grown_at = 0.0
        try:
            while queue or inflight:
                if queue and time.perf_counter() - grown_at >= _GROW_EVERY_S:
                    self._grow()
                    grown_at = time.perf_counter()
                while queue and self.idle:
                    name, unit = self.idle.pop(0), queue.popleft()
                    ref = self.workers[name].train_unit.remote(*unit, epoch)
                    inflight[ref] = (name, unit)
                if self._kill_after is not None and len(ledger) >= self._kill_after:
                    self._kill_one(ledger, inflight)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
                if not ready:
                    bar.update(ray.get(self.dense.progress.remote()) - base - bar.n)
                    continue
                for ref in ready:
                    name, unit = inflight.pop(ref)
                    try:
                        stats = ray.get(ref)
                    except RayActorError as exc:
                        queue.appendleft(unit)
                        self._replace(name, exc)
                        continue
                    except RayTaskError as exc:
                        raise _cause(name, exc) from None
                    key = unit_name(unit)
                    if key in ledger:
                        raise errors.E2EError(
                            f"ps: unit {key} completed twice ({ledger[key]}, {name})"
                        )
                    ledger[key] = name
                    done.append(stats)
                    self.idle.append(name)
            bar.update(ray.get(self.dense.progress.remote()) - base - bar.n)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        synced = self.sync_to_trainer()
        steps = sum(d["steps"] for d in done)
        rows = sum(d["rows"] for d in done)
        return {
            "steps": steps,
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / max(seconds, 1e-9),
            "loss": sum(d["loss_sum"] for d in done) / max(steps, 1),
            "bad_rows": sum(d["bad_rows"] for d in done),
            "first_bad": [b for d in done for b in d["first_bad"]][:5],
            "workers": len(self.workers),
            "units": units,
            "ledger": ledger,
            "restarts": self.restarts,
            "joined": self.joined,
            **synced,
        }

    def _kill_one(self, ledger: dict[str, str], inflight: dict[Any, tuple[str, Unit]]) -> None:
        """The requested kill: a busy worker that already finished a unit of this pass."""
        busy = [name for name, _ in inflight.values()]
        done = set(ledger.values())
        victims = [w for w in busy if w in done] if self._kill_after else busy
        if victims:
            log.info("ps: killing %s (requested)", victims[0])
            ray.kill(self.workers[victims[0]], no_restart=True)
            self._kill_after = None

    def _grow(self) -> None:
        """Start a worker when the cluster has a free CPU, up to ``ps.max_workers``: nodes an
        autoscaler adds (or a local Ray with spare cores) join the pass. One per call, and
        only once Ray placed it: a worker waiting for a CPU must not be handed a unit."""
        ceiling = self.ps.max_workers or self.ps.workers
        if len(self.workers) < ceiling and ray.available_resources().get("CPU", 0) >= 1:
            name = self._start_worker()
            ray.get(self.workers[name].ready.remote())
            self.joined += 1
            log.info("ps: %s joined (%d workers)", name, len(self.workers))

    def _csv(self) -> bool:
        return self.cfg.data.format == "criteo_csv"

    def _replace(self, name: str, exc: BaseException) -> None:
        """A worker died: start another one (``ps.max_worker_restarts`` per run)."""
        del self.workers[name]
        if self.restarts >= self.ps.max_worker_restarts:
            raise errors.E2EError(
                f"ps worker {name} died ({type(exc).__name__}) and ps.max_worker_restarts="
                f"{self.ps.max_worker_restarts} replacements are used up"
            )
        self.restarts += 1
        new = self._start_worker()
        log.warning(
            "ps: %s died (%s); its unit goes back to the queue, %s replaces it (%d/%d)",
            name,
            type(exc).__name__,
            new,
            self.restarts,
            self.ps.max_worker_restarts,
        )

    def close(self) -> None:
        for actor in [*self.workers.values(), *self.shards, self.dense]:
            ray.kill(actor, no_restart=True)
        self.workers.clear()
        if self.started_ray:
            ray.shutdown()


def _cause(worker: str, exc: RayTaskError) -> BaseException:
    """The worker's own error (a kit error as itself), not Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, errors.E2EError):
        return cause
    log.debug("ps worker %s failed:\n%s", worker, exc)
    what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
    return errors.E2EError(f"ps worker {worker}: {what}")
