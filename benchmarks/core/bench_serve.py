"""HTTP serving throughput: the core server with dynamic batching on vs off.

Why: ``e2ekit.core.serve`` batches concurrent requests into one model call. This measures
what that buys over one model call per request (``max_batch_size=1``, what a plain FastAPI
handler calling the model does) for the same model, server code and load, and what it costs
in latency. The model is the 256 -> 1024x3 -> 16 MLP exported with ``export_onnx`` and run by
a ``Predictor`` on onnxruntime, as a kit serves it.

Method: both servers run in this process (``build_server`` in a thread, 127.0.0.1, port 0).
The load generator (``_loadgen.py``) runs in a separate process by default so it does not
compete for the servers' GIL; ``--clients`` concurrent keep-alive clients each post one row
per request until ``--requests`` are done or ``--time-cap-s`` passed. Rounds alternate
between the two servers (order flipped every repeat); requests/s and latencies are medians
over ``--repeats`` rounds, the ratio is the median of per-repeat ratios. The mean batch size
comes from the server's own ``/metrics`` histogram. Nothing is asserted.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _loadgen
import numpy as np
import torch
from _shared import MLP, environment, export_model, log, median, warn_if_busy
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from e2ekit.core.infer import Predictor
from e2ekit.core.serve import (
    BadRequest,
    Endpoint,
    ModelServer,
    ServeClient,
    ServeSettings,
    build_server,
    create_app,
)

WIDTH = 256  # MLP input features
PATH = "/predict"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--hidden", type=int, default=1024, help="MLP width (bigger: batching pays)")
    p.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients")
    p.add_argument("--requests", type=int, default=2000, help="requests per round")
    p.add_argument("--time-cap-s", type=float, default=5.0, help="longest timed part of a round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per server")
    p.add_argument("--max-batch-size", type=int, default=32, help="batching server's limit")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="batching server's wait")
    p.add_argument(
        "--client",
        choices=["process", "inprocess"],
        default="process",
        help="run the load generator in a child process or in this one",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class Rows(BaseModel):
    inputs: list[list[float]]


def make_endpoint(predictor: Predictor) -> Endpoint:
    """A kit-like ``/predict``: rows of floats in, model outputs per row back."""

    def to_items(request: Rows) -> list[list[float]]:
        for i, row in enumerate(request.inputs):
            if len(row) != WIDTH:
                raise BadRequest(f"inputs[{i}] has {len(row)} values; expected {WIDTH}", 422)
        return request.inputs

    def run_batch(rows: list[list[float]]) -> list[np.ndarray]:
        return list(predictor.run({"x": np.asarray(rows, dtype=np.float32)})["y"])

    def to_response(request: Rows, results: list[np.ndarray]) -> dict[str, Any]:
        return {"outputs": results}

    return Endpoint(PATH, Rows, to_items, run_batch, to_response)


@dataclass
class Running:
    name: str
    settings: ServeSettings
    server: ModelServer
    thread: threading.Thread
    client: ServeClient

    def batch_totals(self) -> tuple[float, float]:
        """(sum, count) of the server's batch-size histogram for ``/predict``."""
        totals = {"e2ekit_serve_batch_size_sum": 0.0, "e2ekit_serve_batch_size_count": 0.0}
        for family in text_string_to_metric_families(self.client.metrics_text()):
            for s in family.samples:
                if s.name in totals and s.labels.get("path") == PATH:
                    totals[s.name] = s.value
        return totals["e2ekit_serve_batch_size_sum"], totals["e2ekit_serve_batch_size_count"]


@contextlib.contextmanager
def serving(name: str, predictor: Predictor, settings: ServeSettings) -> Iterator[Running]:
    """Run a server in a thread for the duration of the ``with`` block."""
    app = create_app([make_endpoint(predictor)], settings)
    server = build_server(app, settings, access_log=False, log_level="warning")
    thread = threading.Thread(target=server.run, name=f"uvicorn-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server {name} failed to start")
        time.sleep(0.01)
    client = ServeClient(server.url)
    try:
        yield Running(name, settings, server, thread, client)
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)


def load(url: str, args: argparse.Namespace, requests: int) -> dict[str, Any]:
    """One round of load against ``url`` from the configured load generator."""
    options = {"width": WIDTH, "clients": args.clients, "time_cap_s": args.time_cap_s}
    if args.client == "inprocess":
        return _loadgen.run(url, requests=requests, **options)
    command = [sys.executable, _loadgen.__file__, url, f"--requests={requests}"]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def round_on(run: Running, args: argparse.Namespace) -> dict[str, Any]:
    """One timed round; the batch-size mean is the histogram delta over the round."""
    sum0, count0 = run.batch_totals()
    result = load(run.client.base_url, args, args.requests)
    sum1, count1 = run.batch_totals()
    result["mean_batch_size"] = (sum1 - sum0) / max(count1 - count0, 1)
    log(
        f"[{run.name}] {result['requests_per_s']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, mean batch {result['mean_batch_size']:.2f}, "
        f"errors {result['errors']}"
    )
    return result


def summarize(run: Running, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "max_batch_size": run.settings.max_batch_size,
        "max_wait_ms": run.settings.max_wait_ms,
        "requests_per_s": round(median([r["requests_per_s"] for r in rounds]), 1),
        "p50_ms": round(median([r["p50_ms"] for r in rounds]), 2),
        "p99_ms": round(median([r["p99_ms"] for r in rounds]), 2),
        "mean_batch_size": round(median([r["mean_batch_size"] for r in rounds]), 2),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


def bench(predictor: Predictor, args: argparse.Namespace) -> dict[str, Any]:
    base = {"host": "127.0.0.1", "port": 0, "max_queue": max(1024, 4 * args.clients)}
    on = ServeSettings(**base, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
    off = ServeSettings(**base, max_batch_size=1, max_wait_ms=args.max_wait_ms)
    with serving("batching", predictor, on) as a, serving("no_batching", predictor, off) as b:
        for run in (a, b):
            log(f"[{run.name}] warm-up at {run.client.base_url}")
            load(run.client.base_url, args, min(args.requests, 4 * args.clients))
        rounds: dict[str, list[dict[str, Any]]] = {a.name: [], b.name: []}
        ratios: list[float] = []
        for rep in range(args.repeats):
            for run in (a, b) if rep % 2 == 0 else (b, a):
                rounds[run.name].append(round_on(run, args))
            ratios.append(
                rounds[a.name][-1]["requests_per_s"] / rounds[b.name][-1]["requests_per_s"]
            )
        return {
            "batching": summarize(a, rounds[a.name]),
            "no_batching": summarize(b, rounds[b.name]),
            "batching_vs_no_batching": round(median(ratios), 3),
        }


def main() -> None:
    args = parse_args()
    warn_if_busy()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    out: dict[str, Any] = {
        "benchmark": "core.serve",
        "env": environment(args.threads),
        "model": f"MLP {WIDTH} -> {args.hidden}x3 -> 16, onnxruntime fp32",
        "clients": args.clients,
        "requests_per_round": args.requests,
        "time_cap_s": args.time_cap_s,
        "repeats": args.repeats,
        "client": args.client,
    }
    # The server prints "serving on ..." to stdout; stdout is reserved for the JSON line.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        log("export MLP")
        export_dir = Path(tmp) / "mlp"
        example, parity = torch.randn(2, WIDTH, generator=gen), torch.randn(5, WIDTH, generator=gen)
        export_model(MLP(WIDTH, args.hidden), example, parity, export_dir)
        predictor = Predictor(export_dir, num_threads=args.threads)
        out.update(bench(predictor, args))
    out["loadavg_1m_end"] = os.getloadavg()[0]
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
