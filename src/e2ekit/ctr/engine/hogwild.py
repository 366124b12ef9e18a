"""Fully asynchronous training on one node: Hogwild worker processes on shared parameters.

The model (slot table and dense weights) and the row optimizer's state live in shared
memory; each worker process reads its own shard of the data (a byte range of every TSV
file, or every N-th batch for the other formats), runs the same fused step as the sync
trainer and writes its updates in place with no locks (Recht et al., "Hogwild!", 2011;
the single-node analogue of ElasticCTR's asynchronous parameter-server mode). Each worker
keeps its own dense-optimizer moments. The pool is persistent: epochs and streaming
partitions are tasks sent to the same processes, so start-up is paid once.
"""

from __future__ import annotations

import queue
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from e2ekit.core import errors
from e2ekit.core.logs import log
from e2ekit.core.progress import progress
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.splits import estimate_rows, make_stream

_POLL_S = 0.25


def _worker(
    index: int,
    count: int,
    cfg_dict: dict[str, Any],
    model: Any,
    row_state: dict[str, torch.Tensor],
    threads: int,
    tasks: Any,
    results: Any,
    counter: Any,
    total_steps: int | None = None,
    changed: torch.Tensor | None = None,
) -> None:
    """One Hogwild worker: waits for (paths, epoch) tasks, trains its shard, reports stats."""
    from e2ekit.ctr.engine.stepper import Stepper

    torch.set_num_threads(threads)
    cfg = CtrConfig.model_validate(cfg_dict)
    torch.manual_seed(cfg.seed * 1000 + index)
    stepper = Stepper(model, cfg, total_steps=total_steps)
    stepper.rows.state = row_state  # share the optimizer state, not a private copy
    stepper.changed = changed  # and the rows changed since the last publish
    model.train()
    while True:
        task = tasks.get()
        if task is None:
            return
        paths, epoch, global_step = task
        stepper.fast_forward(global_step // count)  # a resumed run keeps its LR schedule
        try:
            stream = make_stream(cfg, paths, train=True, epoch=epoch, shard=(index, count))
            steps = rows = 0
            loss_sum = 0.0
            t0 = time.perf_counter()
            for batch in stream:
                loss_sum += float(stepper.step(batch))  # CPU only: no device to wait for
                n = len(batch["label"])
                steps += 1
                rows += n
                with counter.get_lock():
                    counter.value += n
            stats = stream.stats
            results.put(
                (
                    "ok",
                    index,
                    {
                        "steps": steps,
                        "rows": rows,
                        "seconds": time.perf_counter() - t0,
                        "loss": loss_sum / max(steps, 1),
                        "bad_rows": stats.bad_rows,
                        "first_bad": list(stats.first_bad),
                    },
                )
            )
        except BaseException as exc:  # reported to the parent, which raises it
            results.put(("error", index, (type(exc).__name__, str(exc), traceback.format_exc())))


class HogwildPool:
    """``train.workers`` processes training one shared model; ``train(paths, epoch)`` = 1 pass."""

    def __init__(self, trainer: Any) -> None:
        cfg: CtrConfig = trainer.cfg
        self.count = cfg.train.workers
        self.progress = cfg.train.progress
        threads = cfg.train.threads or max(1, torch.get_num_threads() // self.count)
        model = trainer.model
        model.share_memory()
        trainer.stepper.rows.share_memory_()
        changed = trainer.stepper.changed
        if changed is not None:
            changed.share_memory_()
        ctx = mp.get_context("spawn")  # fork after OpenMP/pyarrow threads started can hang
        self.tasks = [ctx.Queue() for _ in range(self.count)]
        self.results = ctx.Queue()
        self.counter = ctx.Value("q", 0)
        cfg_dict = cfg.model_dump(mode="json")
        self.procs = []
        for i in range(self.count):
            proc = ctx.Process(
                target=_worker,
                args=(
                    i,
                    self.count,
                    cfg_dict,
                    model,
                    trainer.stepper.rows.state,
                    threads,
                    self.tasks[i],
                    self.results,
                    self.counter,
                    trainer.stepper.total_steps,
                    changed,
                ),
                daemon=True,
                name=f"e2ekit-ctr-hogwild-{i}",
            )
            proc.start()
            self.procs.append(proc)
        log.info("hogwild: %d worker processes x %d threads on shared tables", self.count, threads)

    def train(
        self, paths: str | list[str], *, epoch: int, step: int = 0, desc: str = "train"
    ) -> dict[str, Any]:
        """Every worker trains its shard of ``paths`` once (from global ``step``, which
        positions the LR schedule); returns summed stats."""
        with self.counter.get_lock():
            self.counter.value = 0
        for q in self.tasks:
            q.put((paths, epoch, step))
        bar = progress(
            total=estimate_rows(paths),
            desc=desc,
            unit="row",
            unit_scale=True,
            enabled=self.progress,
        )
        t0 = time.perf_counter()
        done: dict[int, dict[str, Any]] = {}
        try:
            while len(done) < self.count:
                try:
                    status, index, payload = self.results.get(timeout=_POLL_S)
                except queue.Empty:
                    dead = [p.name for p in self.procs if not p.is_alive()]
                    if dead:
                        raise errors.E2EError(
                            f"hogwild worker(s) died: {', '.join(dead)}"
                        ) from None
                    bar.update(self.counter.value - bar.n)
                    continue
                if status == "error":
                    name, message, trace = payload
                    log.debug("worker %d failed:\n%s", index, trace)
                    cls = getattr(errors, name, None)
                    if isinstance(cls, type) and issubclass(cls, errors.E2EError):
                        raise cls(message)
                    raise errors.E2EError(f"hogwild worker {index}: {name}: {message}")
                done[index] = payload
            bar.update(self.counter.value - bar.n)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        rows = sum(d["rows"] for d in done.values())
        first_bad = [b for d in done.values() for b in d["first_bad"]][:5]
        return {
            "steps": sum(d["steps"] for d in done.values()),
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / max(seconds, 1e-9),
            "loss": sum(d["loss"] for d in done.values()) / self.count,
            "bad_rows": sum(d["bad_rows"] for d in done.values()),
            "first_bad": first_bad,
            "workers": self.count,
            # rows over the slowest worker's own loop time: throughput without the
            # queue round trip (what a long-running pool sustains)
            "steady_rows_per_s": rows / max(max(d["seconds"] for d in done.values()), 1e-9),
        }

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
