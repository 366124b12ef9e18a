"""CTR table lookups/s: the embedded mmap store vs Redis (pipelined MGET) vs one GET per key.

Why: a CTR server looks up 26 slot rows per request. This measures, in one run, on one
machine, what each way of holding the table costs per request, for single requests (batch 1)
and for batches of 64 requests (1664 keys in one lookup call):

- ``sparse_store``: the export's in-process ``e2ekit.ctr.runner.SparseStore`` (the table read
  into memory; binary search), the baseline the embedded store must not fall behind;
- ``mmap``: ``MmapStore`` over a one-layer snapshot (the base only);
- ``mmap_3layers``: ``MmapStore`` over a base plus two deltas of 1% of the rows each, the
  shape of a streaming trainer's version between compactions;
- ``redis_mget``: ``RedisStore`` on one local redis-server, one MGET per lookup;
- ``redis_get_per_key``: the naive client a user would write with redis-py: one GET per key
  (same key layout, missing keys -> zeros), for the same requests.

Table: ``--rows`` (1M) keys drawn from 26 slots x 2**18 buckets, width ``--width`` (17: a
first-order weight + a 16-dim embedding), float32. Requests: each slot's key is a held key
with probability 0.9, else a random bucket (mostly a miss). Each variant runs
``--seconds`` per batch size over a fixed pool of requests, after a short warm-up; all
variants answer a sample of requests and must agree exactly (``same_answers``). Also
reported: the time to publish the base and one delta to Redis (``RedisStore.load``) and the
memory Redis uses for the table. The redis-server (no persistence) is started on a free port
by this script; without ``redis-server`` on PATH the Redis part is skipped with a note.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.ctr.kv import MmapStore, SnapshotWriter
from e2ekit.ctr.runner import SparseStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_env import cpu_model, emit, load_now, log, start_redis

HASH_SIZE = 2**18
SLOTS = 26
BATCHES = (1, 64)
NAMESPACE = "bench"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="table rows")
    p.add_argument("--width", type=int, default=17, help="floats per row")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per variant/batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-redis", action="store_true", help="skip the Redis variants")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    return p.parse_args()


def make_table(rows: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(SLOTS * HASH_SIZE, rows, replace=False)).astype(np.int64)
    values = rng.standard_normal((rows, width)).astype(np.float32)
    return keys, values


def make_requests(keys: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` requests of 26 keys (one per slot): 90% held keys, 10% random buckets."""
    rng = np.random.default_rng(seed + 1)
    slot_of = keys // HASH_SIZE
    out = rng.integers(0, HASH_SIZE, (n, SLOTS)) + np.arange(SLOTS) * HASH_SIZE
    for s in range(SLOTS):
        held = keys[slot_of == s]
        pick = rng.random(n) < 0.9
        out[pick, s] = rng.choice(held, int(pick.sum()))
    return out.astype(np.int64)


def time_variant(
    fn: Callable[[np.ndarray], np.ndarray], pool: np.ndarray, batch: int, seconds: float
) -> dict[str, Any]:
    """Requests/s of ``fn`` over batches of ``batch`` requests from ``pool`` (cycled)."""
    batches = [pool[i : i + batch] for i in range(0, len(pool) - batch + 1, batch)]
    for b in batches[:3]:  # warm-up: page cache, connections
        fn(b)
    calls = 0
    started = time.perf_counter()
    while True:
        fn(batches[calls % len(batches)])
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    return {
        "requests_s": round(calls * batch / elapsed, 1),
        "keys_s": round(calls * batch * SLOTS / elapsed, 1),
        "us_per_call": round(elapsed / calls * 1e6, 1),
        "calls": calls,
    }


def write_sparse(folder: Path, keys: np.ndarray, values: np.ndarray) -> Path:
    """The export's ``sparse/`` format, for the SparseStore baseline."""
    folder.mkdir(parents=True)
    np.save(folder / "keys.npy", keys)
    np.save(folder / "values.npy", values)
    manifest = {
        "format": "e2ekit-ctr-sparse",
        "format_version": 1,
        "hash_size": HASH_SIZE,
        "width": int(values.shape[1]),
        "keys_file": "keys.npy",
        "values_file": "values.npy",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def naive_get_per_key(url: str, version: str, width: int) -> Callable[[np.ndarray], np.ndarray]:
    """What a user writes first: one GET per key, missing keys -> zeros."""
    import redis

    client = redis.Redis.from_url(url)
    zero = np.zeros(width, np.float32)

    def lookup(keys: np.ndarray) -> np.ndarray:
        rows = []
        for k in keys.reshape(-1).tolist():
            raw = client.get(f"{NAMESPACE}:{version}:{k}")
            rows.append(zero if raw is None else np.frombuffer(raw, np.float32))
        return np.array(rows, np.float32).reshape((*keys.shape, width))

    return lookup


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loadavg_1m_start": load_now("start"),
    }
    out: dict[str, Any] = {
        "benchmark": "ctr_kv",
        "rows": args.rows,
        "width": args.width,
        "keys_per_request": SLOTS,
        "seconds_per_variant": args.seconds,
    }
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-kv-") as td:
        tmp = Path(td)
        log(f"== table {args.rows} x {args.width} ==")
        keys, values = make_table(args.rows, args.width, args.seed)
        rng = np.random.default_rng(args.seed + 2)
        sparse = SparseStore(write_sparse(tmp / "sparse", keys, values))
        writer = SnapshotWriter(tmp / "snap")
        t = time.perf_counter()
        writer.write_base(keys, values, "base")
        out["snapshot_write_base_s"] = round(time.perf_counter() - t, 3)
        for i in (1, 2):  # deltas: 1% of the rows each, changed
            dk = np.sort(rng.choice(keys, max(1, args.rows // 100), replace=False))
            dv = rng.standard_normal((dk.size, args.width)).astype(np.float32)
            writer.write_delta(dk, dv, f"d{i}")
        t = time.perf_counter()
        mmap = MmapStore(tmp / "snap", "base")
        out["mmap_load_s"] = round(time.perf_counter() - t, 4)
        chain = MmapStore(tmp / "snap", "d2")
        pool = make_requests(keys, 64 * 64, args.seed)
        offsets = np.arange(SLOTS, dtype=np.int64) * HASH_SIZE
        variants: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            # SparseStore takes per-slot buckets and adds slot * hash_size itself
            "sparse_store": lambda k: sparse.lookup(k - offsets),
            "mmap": mmap.lookup,
            "mmap_3layers": chain.lookup,
        }
        redis_proc = None
        if args.no_redis:
            out["redis"] = {"skipped": "--no-redis"}
        elif shutil.which("redis-server") is None:
            out["redis"] = {"skipped": "redis-server not on PATH (apt-get install redis-server)"}
        else:
            from e2ekit.ctr.kv.redis_store import RedisStore

            redis_proc, url, server_version = start_redis(tmp / "redis")
            import redis

            client = redis.Redis.from_url(url)
            store = RedisStore(url, NAMESPACE)
            log("== publishing the base to Redis ==")
            t = time.perf_counter()
            store.load(tmp / "snap", "base")
            base_s = time.perf_counter() - t
            t = time.perf_counter()
            store.load(tmp / "snap", "d1")
            delta_s = time.perf_counter() - t
            store.load(tmp / "snap", "base")
            out["redis"] = {
                "server": server_version,
                "redis_py": redis.__version__,
                "load_base_s": round(base_s, 2),
                "load_base_rows_s": round(args.rows / base_s, 1),
                "load_delta_s": round(delta_s, 3),
                "delta_rows": int(max(1, args.rows // 100)),
                "used_memory_mb": round(client.info("memory")["used_memory"] / 2**20, 1),
            }
            variants["redis_mget"] = store.lookup
            variants["redis_get_per_key"] = naive_get_per_key(url, "base", args.width)
        try:
            sample = pool[:64]
            want = mmap.lookup(sample)
            out["same_answers"] = all(
                np.array_equal(fn(sample), want)
                for name, fn in variants.items()
                if name != "mmap_3layers"
            )
            results: dict[str, dict[str, Any]] = {}
            for name, fn in variants.items():
                for batch in BATCHES:
                    log(f"== {name} batch {batch} ==")
                    results[f"{name}_b{batch}"] = time_variant(fn, pool, batch, args.seconds)
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
    out["requests_s"] = {k: v["requests_s"] for k, v in results.items()}
    ratios: dict[str, float] = {}
    rs = out["requests_s"]
    for b in BATCHES:
        ratios[f"mmap_vs_sparse_store_b{b}"] = ratio(rs[f"mmap_b{b}"], rs[f"sparse_store_b{b}"])
        ratios[f"mmap_3layers_vs_mmap_b{b}"] = ratio(rs[f"mmap_3layers_b{b}"], rs[f"mmap_b{b}"])
        if f"redis_mget_b{b}" in rs:
            ratios[f"mmap_vs_redis_mget_b{b}"] = ratio(rs[f"mmap_b{b}"], rs[f"redis_mget_b{b}"])
            ratios[f"redis_mget_vs_get_per_key_b{b}"] = ratio(
                rs[f"redis_mget_b{b}"], rs[f"redis_get_per_key_b{b}"]
            )
    out["ratios"] = ratios
    out["runs"] = results
    env["loadavg_1m_end"] = load_now("end")
    out.update(env=env, wall_s=round(time.perf_counter() - started, 1))
    emit(out, args.out)


if __name__ == "__main__":
    main()
