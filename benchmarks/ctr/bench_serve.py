"""CTR serving under load while new model versions are published: QPS, p50/p99, errors.

Why: a CTR server follows the folder training publishes versions into (``export.snapshots``,
``serve.watch_s``); each new version is loaded beside the current one and swapped in. This
measures what that costs a client and checks that no request fails meanwhile:

- the served folder: ``--config`` (the shipped ``quick`` DeepFM, 2**16 buckets per slot,
  MLP 256-128, on ``--train-rows`` generated rows) trained for 2 epochs with
  ``export.snapshots=serving``: a base and a delta, each with its dense ONNX model;
- ``e2ekit ctr serve --model <folder> -o serve.watch_s=0.5`` as a subprocess on a free port,
  with the embedded store, then again with ``infer.kv=redis://`` on a redis-server this script
  starts (no persistence; skipped with a note where there is none);
- series: 1, 8 and 32 client threads (``httpx.Client`` each, keep-alive) posting one Criteo
  row per ``/predict``, and 8 clients posting 64 rows, ``--seconds`` each. Every series runs
  twice, back to back: ``static`` (nothing published: what a user without live versions
  gets) then ``swap`` (a background thread publishes a new version every ``--swap-every``
  seconds with ``SnapshotWriter`` -- the two trained versions' dense models and rows in
  turn, under new names, ``compact_every`` ``--compact-every``, deploy.yaml last, the order
  ``Publisher`` writes in);
- per run: requests/s, rows/s, p50/p99/max latency, errors (non-200 or transport failures),
  the distinct ``model_version`` values responses carried, versions going backwards for a
  client (must be 0), and, after the publisher stops, whether responses reach the last
  published version (``caught_up``) and how long that took;
- ``swap_vs_static_qps``: requests/s with swaps / without, per series.

Prints one JSON line on stdout; progress goes to stderr. Clients, server and publisher share
this machine's CPUs: the numbers are end to end on one box, not the server alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_env import cpu_model, emit, free_port, load_now, log, start_redis

ROOT = Path(__file__).resolve().parents[2]
SERIES = (("c1_r1", 1, 1), ("c8_r1", 8, 1), ("c32_r1", 32, 1), ("c8_r64", 8, 64))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick", help="ctr config trained for the served folder")
    p.add_argument("--train-rows", type=int, default=60_000, help="generated train rows")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per run")
    p.add_argument("--swap-every", type=float, default=2.0, help="seconds between versions")
    p.add_argument("--watch-s", type=float, default=0.5, help="serve.watch_s")
    p.add_argument("--compact-every", type=int, default=4, help="deltas before a merged base")
    p.add_argument("--series", default=",".join(s[0] for s in SERIES), help="comma subset")
    p.add_argument("--no-redis", action="store_true", help="skip the Redis store")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    return p.parse_args()


def e2ekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "e2ekit", *args]


# -- the served folder ------------------------------------------------------------------------
def train(tmp: Path, config: str, rows: int) -> Path:
    """Two epochs publishing into ``run/serving``: a base and a delta."""
    run = tmp / "run"
    cmd = e2ekit(
        "ctr", "train", "-c", config, "--out", str(run),
        "-o", "train.epochs=2", "-o", "export.snapshots=serving", "-o", "train.progress=false",
        "-o", f"data.builtin.train_rows={rows}",
        "-o", f"data.builtin.val_rows={max(2000, rows // 20)}",
        "-o", "data.builtin.test_rows=1000",
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"training failed:\n{done.stderr[-3000:]}")
    return run


def val_rows(run: Path, n: int) -> list[str]:
    from e2ekit.core.config import load_config
    from e2ekit.ctr.config import CtrConfig
    from e2ekit.ctr.data.splits import split_paths

    cfg = load_config(run / "config.yaml", CtrConfig, [])
    with open(split_paths(cfg, "val"), encoding="utf-8") as fh:
        return [line.rstrip("\n") for _, line in zip(range(n), fh, strict=False)]


class VersionPublisher:
    """Publishes new versions into a serving folder as training does (dense model, table
    version, deploy.yaml), cycling through the trained versions' dense models and rows."""

    def __init__(self, folder: Path, compact_every: int) -> None:
        from e2ekit.ctr.kv import SnapshotWriter, read_manifest

        self.folder = folder
        self.writer = SnapshotWriter(folder / "sparse", compact_every=compact_every)
        entries = read_manifest(folder / "sparse")["versions"]
        self.sources = []
        for e in entries:
            layer = folder / "sparse" / e["dir"]
            keys, values = np.load(layer / "keys.npy"), np.load(layer / "values.npy")
            self.sources.append((e["meta"], keys, values))
        self.published: list[str] = [entries[-1]["name"]]
        self.publish_s: list[float] = []
        self.kinds: dict[str, int] = {}
        self.count = 0
        self.failures: list[str] = []

    def publish_one(self) -> str:
        from e2ekit.core.fileio import atomic_open

        self.count += 1
        meta, keys, values = self.sources[self.count % len(self.sources)]
        name = f"pub-{self.count:04d}"
        dense = f"dense/{name}.onnx"
        started = time.perf_counter()
        tmp = self.folder / f"dense/.{name}.tmp"
        shutil.copyfile(self.folder / meta["dense"], tmp)
        os.replace(tmp, self.folder / dense)  # 1. the dense model
        info = {**meta, "model_version": name, "dense": dense}
        entry = self.writer.write_delta(keys, values, name, info)  # 2. the table version
        deploy = yaml.safe_load((self.folder / "deploy.yaml").read_text(encoding="utf-8"))
        deploy.update(model_file=dense, model_version=name)
        deploy["sparse"]["version"] = name
        with atomic_open(self.folder / "deploy.yaml") as fh:  # 3. what a new reader opens
            yaml.safe_dump(deploy, fh, sort_keys=False)
        self.publish_s.append(time.perf_counter() - started)
        self.kinds[entry["kind"]] = self.kinds.get(entry["kind"], 0) + 1
        self.published.append(name)
        return name

    def run_every(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.publish_one()
            except Exception as exc:  # reported, not raised: the load keeps running
                self.failures.append(repr(exc))


# -- the server -------------------------------------------------------------------------------


def start_server(
    folder: Path, kv: str, watch_s: float, logfile: Path
) -> tuple[subprocess.Popen, str]:
    """``e2ekit ctr serve`` on a free port, once /health answers: process, base URL."""
    for _ in range(3):
        port = free_port()
        cmd = e2ekit(
            "ctr", "serve", "--model", str(folder), "--port", str(port),
            "-o", f"serve.watch_s={watch_s}", "-o", f"infer.kv={kv}",
        )  # fmt: skip
        with open(logfile, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stop_server(proc)
    raise RuntimeError(f"the server did not start; see {logfile}:\n{logfile.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- load -------------------------------------------------------------------------------------
def client_loop(
    url: str,
    rows: list[str],
    per_request: int,
    offset: int,
    start: threading.Barrier,
    seconds: float,
    out: dict[str, Any],
) -> None:
    """POST /predict until ``seconds`` after the barrier: latencies, statuses, versions."""
    lat: list[float] = []
    versions: list[str | None] = []
    errors: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        i = offset
        start.wait()
        deadline = time.perf_counter() + seconds
        while True:
            body = {"rows": [rows[(i + j) % len(rows)] for j in range(per_request)]}
            i += per_request
            t = time.perf_counter()
            try:
                r = client.post("/predict", json=body)
                took = time.perf_counter() - t
                if r.status_code == 200:
                    versions.append(r.json().get("model_version"))
                else:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                took = time.perf_counter() - t
                errors.append(repr(exc)[:200])
            lat.append(took)
            if t + took >= deadline:
                break
    out.update(lat=lat, versions=versions, errors=errors)


def run_load(
    url: str,
    rows: list[str],
    clients: int,
    per_request: int,
    seconds: float,
    order: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One timed run of ``clients`` threads; ``order`` maps published names to their rank
    (to count a client seeing an older version after a newer one)."""
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(
            target=client_loop,
            args=(url, rows, per_request, k * 97, start, seconds, results[k]),
        )
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r["lat"]]) * 1000
    errors = [e for r in results for e in r["errors"]]
    ok = sum(len(r["versions"]) for r in results)
    regressions = 0
    if order is not None:
        for r in results:
            best = -1
            for v in r["versions"]:
                rank = order.get(v, -1) if v is not None else -1
                regressions += rank < best
                best = max(best, rank)
    seen: list[str] = []
    for r in results:
        seen.extend(v for v in r["versions"] if v is not None and v not in seen)
    rank = order or {}
    newest = max(seen, key=lambda v: rank.get(v, -1)) if seen else None
    return {
        "requests": int(lat.size),
        "qps": round(ok / elapsed, 1),
        "rows_s": round(ok * per_request / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 1),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "versions_seen": len(seen),
        "newest_version": newest,
        "version_regressions": regressions,
        "seconds": round(elapsed, 2),
    }


def wait_for_version(url: str, row: str, version: str, timeout: float = 20.0) -> float | None:
    """Seconds until a response carries ``version``; None when none did in ``timeout``."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() - t0 < timeout:
            r = client.post("/predict", json={"rows": [row]})
            if r.status_code == 200 and r.json().get("model_version") == version:
                return round(time.perf_counter() - t0, 3)
            time.sleep(0.05)
    return None


def bench_store(
    name: str,
    source: Path,
    tmp: Path,
    kv: str,
    rows: list[str],
    series: list[tuple[str, int, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every series, static then with swaps, on one server over a fresh copy of the folder."""
    folder = tmp / f"serving-{name}"
    shutil.copytree(source, folder)
    publisher = VersionPublisher(folder, args.compact_every)
    logfile = tmp / f"server-{name}.log"
    proc, url = start_server(folder, kv, args.watch_s, logfile)
    out: dict[str, Any] = {"kv": "embedded" if kv == "embedded" else "redis"}
    try:
        for _ in range(20):  # warm-up: onnxruntime, connections
            httpx.post(f"{url}/predict", json={"rows": rows[:8]}, timeout=30)
        for key, clients, per_request in series:
            got: dict[str, Any] = {}
            log(f"== {name} {key}: static ==")
            got["static"] = run_load(url, rows, clients, per_request, args.seconds)
            log(f"   {got['static']['qps']} req/s, p99 {got['static']['p99_ms']} ms")
            log(f"== {name} {key}: swap every {args.swap_every}s ==")
            first = len(publisher.published)
            stop = threading.Event()
            pub = threading.Thread(target=publisher.run_every, args=(args.swap_every, stop))
            order = {v: i for i, v in enumerate(publisher.published)}
            order.update({f"pub-{i:04d}": i for i in range(1, 10_000)})
            pub.start()
            swap = run_load(url, rows, clients, per_request, args.seconds, order)
            stop.set()
            pub.join()
            last = publisher.published[-1]
            swap["published"] = len(publisher.published) - first
            swap["last_published"] = last
            swap["caught_up_s"] = wait_for_version(url, rows[0], last)
            swap["caught_up"] = swap["caught_up_s"] is not None
            got["swap"] = swap
            got["swap_vs_static_qps"] = round(swap["qps"] / got["static"]["qps"], 3)
            got["swap_vs_static_p99"] = round(swap["p99_ms"] / got["static"]["p99_ms"], 3)
            log(
                f"   {swap['qps']} req/s, p99 {swap['p99_ms']} ms, {swap['published']} "
                f"published, {swap['versions_seen']} seen, errors {swap['errors']}"
            )
            out[key] = got
        out["health_version"] = httpx.get(f"{url}/health", timeout=10).json().get("model_version")
    finally:
        out["server_rc"] = stop_server(proc)
    text = logfile.read_text(errors="replace")
    out["server_swaps"] = text.count("now serving ctr version")
    out["server_load_warnings"] = text.count("not loaded")
    out["server_tracebacks"] = text.count("Traceback")
    out["published_total"] = publisher.count
    out["published_kinds"] = publisher.kinds
    out["publish_ms_mean"] = round(float(np.mean(publisher.publish_s)) * 1000, 1)
    out["publish_failures"] = publisher.failures[:3]
    return out


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    import onnxruntime

    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "httpx": httpx.__version__,
        "loadavg_1m_start": load_now("start"),
    }
    from e2ekit.core.serve.settings import ServeSettings

    defaults = ServeSettings().model_dump()
    wanted = set(args.series.split(","))
    series = [s for s in SERIES if s[0] in wanted]
    out: dict[str, Any] = {
        "benchmark": "ctr_serve",
        "settings": {
            "config": args.config,
            "train_rows": args.train_rows,
            "seconds": args.seconds,
            "swap_every_s": args.swap_every,
            "watch_s": args.watch_s,
            "compact_every": args.compact_every,
            "serve_defaults": {k: defaults[k] for k in ("max_batch_size", "max_wait_ms")},
            "series": {k: {"clients": c, "rows_per_request": r} for k, c, r in series},
        },
    }
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-serve-") as td:
        tmp = Path(td)
        log(f"== training {args.config} on {args.train_rows} rows, 2 epochs ==")
        t = time.perf_counter()
        run = train(tmp, args.config, args.train_rows)
        out["train_s"] = round(time.perf_counter() - t, 1)
        from e2ekit.ctr.kv import read_manifest

        deploy = yaml.safe_load((run / "serving" / "deploy.yaml").read_text())
        out["model"] = {
            "type": deploy["model_type"],
            "hash_size": deploy["hash_size"],
            "width": deploy["width"],
            "versions": {
                e["name"]: {"kind": e["kind"], "rows": e["rows"]}
                for e in read_manifest(run / "serving" / "sparse")["versions"]
            },
        }
        rows = val_rows(run, 2048)
        stores: dict[str, Any] = {}
        stores["embedded"] = bench_store(
            "embedded", run / "serving", tmp, "embedded", rows, series, args
        )
        if args.no_redis:
            stores["redis"] = {"skipped": "--no-redis"}
        elif shutil.which("redis-server") is None:
            stores["redis"] = {"skipped": "redis-server not on PATH (apt-get install redis-server)"}
        else:
            import redis

            proc, url, server_version = start_redis(tmp / "redis")
            try:
                stores["redis"] = bench_store(
                    "redis", run / "serving", tmp, url, rows, series, args
                )
                stores["redis"]["server"] = server_version
                stores["redis"]["redis_py"] = redis.__version__
                client = redis.Redis.from_url(url)
                stores["redis"]["used_memory_mb"] = round(
                    client.info("memory")["used_memory"] / 2**20, 1
                )
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    out["stores"] = stores
    summary: dict[str, Any] = {}
    errors = 0
    regressions = 0
    caught_up = True
    for store, got in stores.items():
        for key, _, _ in series:
            if key not in got:
                continue
            s = got[key]
            for mode in ("static", "swap"):
                summary[f"{store}_{key}_{mode}"] = {
                    k: s[mode][k] for k in ("qps", "rows_s", "p50_ms", "p99_ms", "errors")
                }
                errors += s[mode]["errors"]
            summary[f"{store}_{key}_swap"]["versions_seen"] = s["swap"]["versions_seen"]
            regressions += s["swap"]["version_regressions"]
            caught_up = caught_up and s["swap"]["caught_up"]
    out["summary"] = summary
    out["ratios"] = {
        f"{store}_{key}_swap_vs_static_qps": got[key]["swap_vs_static_qps"]
        for store, got in stores.items()
        for key, _, _ in series
        if key in got
    }
    if "c1_r1" in stores["embedded"] and "c1_r1" in stores.get("redis", {}):
        for key, _, _ in series:
            out["ratios"][f"redis_vs_embedded_{key}_static_qps"] = round(
                stores["redis"][key]["static"]["qps"] / stores["embedded"][key]["static"]["qps"], 3
            )
    out["errors_total"] = errors
    out["version_regressions_total"] = regressions
    out["all_caught_up"] = caught_up
    env["loadavg_1m_end"] = load_now("end")
    out.update(env=env, wall_s=round(time.perf_counter() - started, 1))
    emit(out, args.out)


if __name__ == "__main__":
    main()
