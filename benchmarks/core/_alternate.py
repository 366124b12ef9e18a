"""Alternating-block timing and the peer-worker client shared by the kit benchmarks.

Why alternate: on a small shared VM the speed drifts up to 2x within minutes, so the
variants being compared run in short blocks, one after the other, the order rotating every
repeat; throughput is the median block and a ratio is the median of per-repeat ratios.
Peers that live in another venv (PaddlePaddle) run in a long-lived worker process that
answers one JSON line per command, so their blocks can be interleaved with ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Block = Callable[[int], float]  # run n iterations, return seconds


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the final JSON line."""
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def load_warning(when: str) -> float:
    """The 1-min load average (recorded in the JSON), with a warning when over the CPU count."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        log(f"warning ({when}): 1-min load average {load:.1f} on {cpus} CPUs; results are noisy")
    return round(load, 2)


def timed(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def alternate(
    blocks: dict[str, Block], iters: dict[str, int], repeats: int, pause_s: float = 0.3
) -> dict[str, list[float]]:
    """Rotate the order every repeat; returns seconds per iteration, per variant and repeat."""
    names = list(blocks)
    per_iter: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(pause_s)  # the other runtimes' spinning threads go idle
            per_iter[name].append(blocks[name](iters[name]) / iters[name])
        cells = " ".join(f"{n}={v[-1]:.3g}" for n, v in per_iter.items())
        log(f"  repeat {rep + 1}: s/iter {cells} (load {os.getloadavg()[0]:.1f})")
    return per_iter


def calibrate(blocks: dict[str, Block], warm: dict[str, float], block_s: float) -> dict:
    """Iterations per block from one warm iteration (at least 1)."""
    out = {}
    for name, run in blocks.items():
        t = warm.get(name)
        if t is None:
            run(1)  # warm-up (allocations, oneDNN primitives)
            t = run(1)
        out[name] = max(1, round(block_s / max(t, 1e-6)))
    return out


def summarize(per_iter: dict[str, list[float]], images: int) -> dict[str, float]:
    return {n: round(images / median(v), 4) for n, v in per_iter.items()}


def ratio(per_iter: dict[str, list[float]], a: str, b: str) -> float | None:
    """Median over repeats of (a's images/s) / (b's images/s)."""
    if a not in per_iter or b not in per_iter:
        return None
    return round(median([tb / ta for ta, tb in zip(per_iter[a], per_iter[b], strict=True)]), 3)


class WorkerClient:
    """A long-lived peer worker script in another interpreter (JSON lines on stdin/stdout)."""

    def __init__(self, python: Path, script: Path, threads: int, log_path: Path) -> None:
        n = str(threads)
        env = {
            **os.environ,
            "BENCH_THREADS": n,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "GLOG_minloglevel": "2",
            "PYTHONWARNINGS": "ignore",
        }
        env.pop("PYTHONPATH", None)
        self.log_path = log_path
        self.log_fh = log_path.open("w")
        self.proc = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_fh,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"worker exited during {cmd!r}; its log ends:\n{tail}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"worker {cmd!r} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log_fh.close()
