"""Sentence vectors over HTTP: ``e2ekit text serve`` vs a plain FastAPI server vs infinity-emb.

Why: ``e2ekit text serve`` packs the requests of many clients into one model call (the core
batcher) and runs the optimised ONNX encoder; this measures what that buys a client against
what a user would write in 20 lines and against a dedicated embedding server, on the same
machine, model and CPU threads. Servers, started by this script one at a time on free local
ports:

- ``ours``: ``e2ekit text serve --model <MiniLM folder> --threads T`` (onnxruntime fp32, its
  default), requests to ``/v1/embeddings`` (OpenAI shape);
- ``ours_int8``: the same with ``--precision int8`` (dynamic int8 quantisation);
- ``plain``: FastAPI + uvicorn + ``SentenceTransformer(folder).encode`` (torch), one request
  at a time, written to a temp file by this script;
- ``infinity``: ``infinity_emb v2 --engine torch --device cpu`` in its own venv
  (``benchmarks/.venvs/infinity``, made on first use by ``_infinity_env.py``; never a
  project dependency), requests to its ``/embeddings``. When the venv cannot be built a note
  says why and the run goes on without it.

Every server gets the same threads: ``--threads`` (default: all CPUs) through its own flag
where it has one, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in its environment.

Load: 1, 8 and 32 client threads (``httpx.Client`` each, keep-alive) posting 1 or 32
English-like sentences of 16-24 words per request, ``--seconds`` per cell (10; ``--quick``:
2 s, 1 and 8 clients). Per cell: requests/s, sentences/s, p50/p99/max latency and errors
(non-200 or transport failures). Before the load each server's vectors are checked against
sentence-transformers' on the same sentences (lowest cosine; >= 0.99 expected, int8 lower).

``--rounds R`` measures every server R times, the servers alternating (A B C D A B C D), and
a cell reports the round of median QPS (the upper one of an even count), every round's QPS
beside it: other work on a shared machine slows whichever server runs at that moment.
Each cell also records the server process's CPU seconds (from /proc) and sentences per CPU
second, which other load disturbs less than wall-clock QPS.

Ratios: ours vs plain and ours vs infinity, QPS and p99 per cell; the goal is ours >= 1.5x
infinity's QPS at equal or better p99 with 8 clients x 1 sentence.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/text/bench_service.py            # full grid
    PYTHONPATH=src .venv/bin/python benchmarks/text/bench_service.py --quick    # smoke run

Prints one JSON line on stdout; progress goes to stderr. Clients and server share this
machine's CPUs: the numbers are end to end on one box, not the server alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _infinity_env
from _bench_env import cpu_flags, cpu_model, emit, load_now, log
from bench_encoder import WORDS

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = (1, 8, 32)
QUICK_CLIENTS = (1, 8)
BATCHES = (1, 32)
SERVERS = ("ours", "ours_int8", "plain", "infinity")
GOAL = {"cell": "c8_b1", "min_qps_ratio": 1.5, "vs": "infinity", "p99": "equal or better"}
MIN_COSINE = 0.99

PLAIN_SERVER = '''
"""A plain embedding server: FastAPI + sentence-transformers, one request at a time."""
import os
import threading

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
model = SentenceTransformer(os.environ["BENCH_MODEL"], device="cpu")
lock = threading.Lock()
app = FastAPI()


class Embeddings(BaseModel):
    input: str | list[str]
    model: str | None = None


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/v1/embeddings")
def embeddings(req: Embeddings):
    texts = [req.input] if isinstance(req.input, str) else req.input
    with lock:
        vectors = model.encode(texts, batch_size=len(texts))
    data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": "plain"}


uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning")
'''


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="model folder or the alias minilm")
    p.add_argument("--quick", action="store_true", help="2 s per cell, 1 and 8 clients")
    p.add_argument("--seconds", type=float, help="timed seconds per cell (10; --quick 2)")
    p.add_argument("--clients", help="comma list of client counts (default 1,8,32)")
    p.add_argument("--batches", help="comma list of sentences per request (default 1,32)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma subset of servers")
    p.add_argument(
        "--rounds", type=int, default=1, help="times each server is measured, servers alternating"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server threads")
    p.add_argument(
        "--infinity-venv", type=Path, default=_infinity_env.DEFAULT_VENV, help="peer venv"
    )
    p.add_argument("--out", type=Path, help="also write the JSON line to this file")
    return p.parse_args()


def _ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else default


def make_sentences(count: int, seed: int) -> list[str]:
    """English-like sentences of 16-24 common words, a comma now and then, a full stop."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(16, 25)))]
        for i in range(3, len(words) - 3):
            if rng.random() < 0.06:
                words[i] += ","
        text = " ".join(words)
        out.append(text[:1].upper() + text[1:] + ".")
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its direct children (from /proc; None
    elsewhere): a server's work per cell, less sensitive to other load than wall time."""
    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the servers --------------------------------------------------------------------------------
class Server:
    """One server to measure: how to start it, where to post, the body it takes."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        path: str,
        env: dict[str, str] | None = None,
        health: str = "/health",
        body_model: str | None = None,
    ) -> None:
        self.name, self.cmd, self.path, self.health = name, cmd, path, health
        self.env = env or {}
        self.body_model = body_model
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.start_s = 0.0

    def body(self, texts: list[str]) -> bytes:
        payload: dict[str, Any] = {"input": texts}
        if self.body_model is not None:
            payload["model"] = self.body_model
        return json.dumps(payload).encode()

    def start(self, logfile: Path, threads: int, timeout: float = 240.0) -> None:
        port = free_port()
        cmd = [c.replace("{port}", str(port)) for c in self.cmd]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "BENCH_PORT": str(port),
            **self.env,
        }
        t0 = time.perf_counter()
        with open(logfile, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    self.start_s = round(time.perf_counter() - t0, 1)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        tail = logfile.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start; {logfile}:\n{tail}")

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def vectors(self, texts: list[str]) -> np.ndarray:
        r = httpx.post(
            self.url + self.path,
            content=self.body(texts),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        r.raise_for_status()
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        return np.asarray([d["embedding"] for d in data], dtype=np.float32)


def infinity_model_id(server: Server) -> str | None:
    """The model id infinity answers ``/models`` with (the folder path unless renamed)."""
    try:
        data = httpx.get(server.url + "/models", timeout=10).json().get("data", [])
        return data[0]["id"] if data else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def infinity_route(server: Server) -> str:
    """The embeddings route from the server's OpenAPI (``/embeddings`` unless prefixed)."""
    try:
        paths = httpx.get(server.url + "/openapi.json", timeout=10).json().get("paths", {})
    except (httpx.HTTPError, ValueError):
        return "/embeddings"
    for p in paths:
        if p.endswith("/embeddings"):
            return p
    return "/embeddings"


def build_servers(
    names: list[str], folder: Path, args: argparse.Namespace, tmp: Path, notes: list[str]
) -> tuple[list[Server], dict[str, str]]:
    """The servers to measure, in order; the peer's versions when it is among them."""
    servers: list[Server] = []
    peer: dict[str, str] = {}
    ours = [sys.executable, "-m", "e2ekit", "text", "serve", "--model", str(folder)]
    ours += ["--port", "{port}", "--threads", str(args.threads)]
    src = str(ROOT / "src")
    pypath = {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in names:
        if name == "ours":
            servers.append(Server(name, ours, "/v1/embeddings", pypath, body_model="minilm"))
        elif name == "ours_int8":
            cmd = [*ours, "--precision", "int8"]
            servers.append(Server(name, cmd, "/v1/embeddings", pypath, body_model="minilm"))
        elif name == "plain":
            script = tmp / "plain_server.py"
            script.write_text(textwrap.dedent(PLAIN_SERVER))
            env = {"BENCH_MODEL": str(folder), "BENCH_THREADS": str(args.threads)}
            servers.append(Server(name, [sys.executable, str(script)], "/v1/embeddings", env))
        elif name == "infinity":
            try:
                _infinity_env.ensure_venv(args.infinity_venv, log=log)
            except (OSError, subprocess.CalledProcessError) as exc:
                notes.append(f"infinity left out: its venv could not be built ({exc})")
                continue
            peer = _infinity_env.peer_versions(args.infinity_venv)
            cmd = [
                str(_infinity_env.server_of(args.infinity_venv)), "v2",
                "--model-id", str(folder), "--engine", "torch", "--device", "cpu",
                "--host", "127.0.0.1", "--port", "{port}",
            ]  # fmt: skip
            servers.append(Server(name, cmd, "/embeddings"))
        else:
            raise SystemExit(f"unknown server {name!r}: choose from {SERVERS}")
    return servers, peer


# -- load ---------------------------------------------------------------------------------------
def client_loop(
    url: str,
    bodies: list[bytes],
    offset: int,
    start: threading.Barrier,
    seconds: float,
    out: dict[str, Any],
) -> None:
    """POST pre-built bodies until ``seconds`` after the barrier: latencies and errors."""
    lat: list[float] = []
    ok = 0
    errors: list[str] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        i = offset
        start.wait()
        deadline = time.perf_counter() + seconds
        while True:
            body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                r = client.post(url, content=body, headers=headers)
                took = time.perf_counter() - t
                if r.status_code == 200:
                    ok += 1
                else:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                took = time.perf_counter() - t
                errors.append(repr(exc)[:200])
            lat.append(took)
            if t + took >= deadline:
                break
    out.update(lat=lat, ok=ok, errors=errors)


def run_cell(
    url: str, bodies: list[bytes], clients: int, batch: int, seconds: float, pid: int
) -> dict:
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(target=client_loop, args=(url, bodies, k * 7, start, seconds, results[k]))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds(pid)
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid)
    lat = np.array([x for r in results for x in r["lat"]]) * 1000
    ok = sum(r["ok"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return {
        "qps": round(ok / elapsed, 1),
        "sps": round(ok * batch / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 1),
        "requests": int(lat.size),
        "server_cpu_s": round(cpu, 2) if cpu is not None else None,
        "sps_per_cpu_s": round(ok * batch / cpu, 1) if cpu else None,
        "errors": len(errors),
        **({"error_samples": sorted(set(errors))[:3]} if errors else {}),
    }


def bench_server(
    server: Server,
    cells: list[tuple[int, int]],
    pool: list[str],
    check: list[str],
    reference: np.ndarray,
    args: argparse.Namespace,
    seconds: float,
    tmp: Path,
) -> dict[str, Any]:
    logfile = tmp / f"{server.name}.log"
    log(f"== {server.name}: starting ==")
    out: dict[str, Any] = {"load_avg_start": load_now(server.name)}
    server.start(logfile, args.threads)
    try:
        if server.name == "infinity":
            server.path = infinity_route(server)
            given = server.cmd[server.cmd.index("--model-id") + 1]
            server.body_model = infinity_model_id(server) or given
        out.update(start_s=server.start_s, route=server.path)
        got = server.vectors(check)
        a = got / np.linalg.norm(got, axis=1, keepdims=True)
        b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        cosine = float((a * b).sum(axis=1).min()) if a.shape == b.shape else float("nan")
        out["min_cosine_vs_st"] = round(cosine, 5)
        out["dim"] = int(got.shape[1])
        log(f"   up in {server.start_s} s; lowest cosine to sentence-transformers {cosine:.5f}")
        url = server.url + server.path
        pid = server.proc.pid  # type: ignore[union-attr]
        for batch in sorted({b for _, b in cells}):
            bodies = [
                server.body([pool[(k * batch + j) % len(pool)] for j in range(batch)])
                for k in range(max(64, len(pool) // batch))
            ]
            warm = min(2.0, seconds / 2)
            run_cell(url, bodies, 4, batch, warm, pid)  # warm-up: connections, lazy init
            for clients, b in cells:
                if b != batch:
                    continue
                key = f"c{clients}_b{batch}"
                cell = run_cell(url, bodies, clients, batch, seconds, pid)
                out[key] = cell
                log(
                    f"   {key}: {cell['qps']} req/s, {cell['sps']} sentences/s, "
                    f"p50 {cell['p50_ms']} ms, p99 {cell['p99_ms']} ms, errors {cell['errors']}"
                )
    finally:
        out["server_rc"] = server.stop()
    text = logfile.read_text(errors="replace")
    out["server_tracebacks"] = text.count("Traceback")
    return out


def combine(rounds: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """One server's rounds as one entry: per cell the round of median QPS (the upper one
    of an even count), with every round's QPS beside it; the rest from the first round."""
    out = dict(rounds[0])
    out["load_avg_start"] = [r["load_avg_start"] for r in rounds]
    for key in keys:
        cells = [r[key] for r in rounds if key in r]
        if not cells:
            continue
        ranked = sorted(cells, key=lambda c: c["qps"])
        out[key] = dict(ranked[len(ranked) // 2])
        if len(cells) > 1:
            out[key]["qps_rounds"] = [c["qps"] for c in cells]
    return out


def ratios(results: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Per cell: ours / peer for QPS and p99 (p99 below 1 is ours faster)."""
    out: dict[str, Any] = {}
    for ours in ("ours", "ours_int8"):
        for peer in ("plain", "infinity"):
            a, b = results.get(ours, {}), results.get(peer, {})
            for key in keys:
                if key in a and key in b and b[key]["qps"] > 0 and b[key]["p99_ms"] > 0:
                    out[f"{ours}_vs_{peer}_{key}"] = {
                        "qps": round(a[key]["qps"] / b[key]["qps"], 2),
                        "p99": round(a[key]["p99_ms"] / b[key]["p99_ms"], 2),
                    }
    return out


def e2ekit_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("e2ekit")
    except PackageNotFoundError:
        return None


def main() -> None:
    args = parse_args()
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from e2ekit.core.serve.settings import ServeSettings
    from e2ekit.text.models.pretrained import resolve_model_dir

    t_start = time.perf_counter()
    load_start = load_now("start")
    folder = resolve_model_dir(args.model, "--model", weights=True)
    clients = _ints(args.clients, QUICK_CLIENTS if args.quick else CLIENTS)
    batches = _ints(args.batches, BATCHES)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 10.0)
    cells = [(c, b) for b in batches for c in clients]
    keys = [f"c{c}_b{b}" for c, b in cells]
    names = [s for s in args.servers.split(",") if s]
    log(f"model {folder}, threads {args.threads}, cells {keys}, {seconds} s each")

    pool = make_sentences(512, seed=2)
    check = [*make_sentences(14, seed=1), "Hi.", "A man is playing a guitar."]
    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(folder), device="cpu")
    reference = np.asarray(st.encode(check, batch_size=len(check)), dtype=np.float32)
    del st

    notes: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-service-") as td:
        tmp = Path(td)
        servers, peer = build_servers(names, folder, args, tmp, notes)
        for rnd in range(args.rounds):
            if args.rounds > 1:
                log(f"-- round {rnd + 1} of {args.rounds} --")
            for server in servers:
                try:
                    got = bench_server(server, cells, pool, check, reference, args, seconds, tmp)
                    runs.setdefault(server.name, []).append(got)
                except Exception as exc:  # one server failing leaves the others' figures
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    notes.append(f"{server.name} failed (round {rnd + 1}): {first}")
                    log(f"   {server.name} failed: {exc}")
                    server.stop()
    results = {name: combine(got, keys) for name, got in runs.items()}

    agreement = {n: r.get("min_cosine_vs_st") for n, r in results.items()}
    low = {n: c for n, c in agreement.items() if c is not None and not c >= MIN_COSINE}
    if low:
        notes.append(f"vectors below cosine {MIN_COSINE} to sentence-transformers': {low}")
    rat = ratios(results, keys)
    goal: dict[str, Any] = dict(GOAL)
    hit = rat.get(f"ours_vs_infinity_{GOAL['cell']}")
    if hit is not None:
        goal.update(qps_ratio=hit["qps"], p99_ratio=hit["p99"])
        goal["met"] = hit["qps"] >= GOAL["min_qps_ratio"] and hit["p99"] <= 1.0
    defaults = ServeSettings().model_dump()
    import onnxruntime

    emit(
        {
            "bench": "text_service",
            "model": str(folder),
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "quick": args.quick,
            "settings": {
                "seconds_per_cell": seconds,
                "rounds": args.rounds,
                "clients": list(clients),
                "sentences_per_request": list(batches),
                "words_per_sentence": [16, 24],
                "serve_defaults": {k: defaults[k] for k in ("max_batch_size", "max_wait_ms")},
                "servers": [s.name for s in servers],
            },
            "servers": results,
            "agreement_min_cosine_vs_st": agreement,
            "ratios": rat,
            "goal": goal,
            "errors_total": sum(r[k]["errors"] for r in results.values() for k in keys if k in r),
            "notes": notes,
            "versions": {
                "python": platform.python_version(),
                "e2ekit": e2ekit_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "onnxruntime": onnxruntime.__version__,
                "httpx": httpx.__version__,
                "peer": peer,
            },
            "load_avg": [load_start, load_now("end")],
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
