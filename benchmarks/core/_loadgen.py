"""HTTP load generator for bench_serve.py: N concurrent clients, one row per request.

Runs in its own process by default (``python _loadgen.py URL ...`` prints one JSON line) so
the clients do not share the server's GIL; an in-process client would mostly measure the
two fighting over it. ``run`` can also be called directly (bench_serve --client inprocess).
Only the standard library, httpx and numpy: it must start fast and never import torch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import numpy as np

JSON_HEADERS = {"Content-Type": "application/json"}


def make_bodies(width: int, count: int = 64, seed: int = 0) -> list[bytes]:
    """Pre-encoded request bodies (one row each), so the client spends no time on JSON."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, width)).round(4)
    return [json.dumps({"inputs": [row.tolist()]}).encode() for row in rows]


async def _load(
    url: str, path: str, bodies: list[bytes], clients: int, requests: int, time_cap_s: float
) -> dict[str, Any]:
    # One AsyncClient (one keep-alive connection) per simulated client: a single shared
    # client's pool gets slow with many concurrent requests (encode/httpx#3215) and would
    # make the load generator, not the server, the bottleneck.
    pool = [httpx.AsyncClient(base_url=url, timeout=60.0) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def post(http: httpx.AsyncClient, i: int) -> float:
        nonlocal errors
        start = time.perf_counter()
        response = await http.post(path, content=bodies[i % len(bodies)], headers=JSON_HEADERS)
        if response.status_code != 200:
            errors += 1
        return time.perf_counter() - start

    async def client(http: httpx.AsyncClient, deadline: float) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            latencies.append(await post(http, issued))

    try:
        # Untimed: open every connection first, so the timed part measures steady state.
        await asyncio.gather(*(post(http, i) for i, http in enumerate(pool)))
        errors = 0
        start = time.perf_counter()
        await asyncio.gather(*(client(http, start + time_cap_s) for http in pool))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(http.aclose() for http in pool))
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }


def run(
    url: str,
    *,
    width: int,
    clients: int,
    requests: int,
    time_cap_s: float,
    path: str = "/predict",
) -> dict[str, Any]:
    """Send up to ``requests`` requests from ``clients`` concurrent clients (or stop at the
    time cap); returns throughput, latency percentiles and the error count."""
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # installed with uvicorn[standard]; a cheaper client leaves more CPU

        runner = uvloop.run
    return runner(_load(url, path, make_bodies(width), clients, requests, time_cap_s))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--time-cap-s", type=float, required=True)
    a = p.parse_args()
    result = run(
        a.url, width=a.width, clients=a.clients, requests=a.requests, time_cap_s=a.time_cap_s
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
