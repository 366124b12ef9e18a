"""Every kit's model server as a client sees it: fuzzed with schemathesis from its own OpenAPI
schema, loaded by concurrent clients mixing valid, malformed and image-bomb requests, flooded
past its queue (503 + Retry-After), starved of time (504) and stopped with SIGTERM (exit 0).
The text vector service (``e2ekit text serve --model minilm``: ``/encode`` and
``/v1/embeddings``) is one more target, ``text-encoder``, fuzzed and loaded the same way."""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import math
import random
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from PIL import Image

from reliability.common import KITS, PYTHON, Row, Timer, base_env, build, print_rows

START_TIMEOUT_S = 180.0  # torch + onnxruntime imports on a busy 2-core machine
STOP_MARGIN_S = 10.0  # beyond serve.graceful_timeout_s: interpreter teardown
CLIENT_TIMEOUT_S = 60.0  # a request is a hang well before this (serve.request_timeout_s is 30)
HANG_S = 10.0  # with a tiny serve.request_timeout_s, no answer within this is a hang
BOMB_SIDE = 16000  # 256 MP declared by a PNG of a few tens of KB
BOMB_MAX_MS = 2000.0  # a bomb is refused from its header: never as slow as decoding it
RSS_GROWTH_MAX_MB = 300.0  # allocator caches grow a little under load; a leak grows steadily
ENCODER = "text-encoder"  # the vector service's target name (served by the text kit)
ENCODER_MODEL = "minilm"  # the pretrained encoder it serves: no build needed
ENCODER_GROWTH = (0.25, 100.0)  # RSS may grow by this fraction of its start plus these MB
TARGETS = (*KITS, ENCODER)


# -- a server subprocess ------------------------------------------------------------------------
def free_port() -> int:
    """A port nobody listens on right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``e2ekit <kit> serve`` running as a user starts it."""

    kit: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    graceful_s: float
    exit_code: int | None = None
    stop_s: float | None = None

    def rss_mb(self) -> float:
        """Resident memory of the server process (VmRSS), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        """SIGTERM, then wait up to the grace period (plus teardown); record how it ended."""
        if self.proc.poll() is None:
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.graceful_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = None  # did not stop by itself
                self.stop_s = None
                return
            self.stop_s = round(time.perf_counter() - t0, 1)
        self.exit_code = self.proc.returncode

    def tail(self, n: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""


@contextmanager
def serving(
    work: Path, kit: str, tag: str, overrides: Sequence[str] = (), model: str | None = None
) -> Iterator[Server]:
    """Build ``kit`` (unless ``model`` names what to serve, e.g. ``minilm``), start its server
    with ``-o serve.KEY=VALUE`` overrides, wait for ``/health``; the server always ends
    (SIGTERM, else kill) when the block exits."""
    model = model or str(build(work, kit).export)
    port = free_port()
    folder = work / "servers"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{kit}-{tag}.log"
    args = [PYTHON, "-m", "e2ekit", kit, "serve", "--model", model]
    for o in [f"serve.port={port}", *overrides]:
        args += ["-o", o]
    graceful = next(
        (float(o.split("=", 1)[1]) for o in overrides if o.startswith("serve.graceful_timeout_s=")),
        10.0,
    )
    env = base_env(work)
    env.pop("E2EKIT_API_KEY", None)  # a key in the caller's shell would turn every call to 401
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    server = Server(kit, proc, f"http://127.0.0.1:{port}", log, graceful)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kit} server exited {proc.returncode}:\n{server.tail()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kit} server not healthy in {START_TIMEOUT_S}s")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def judge_load(
    load: Row, res: Any, server: Server, health: int, grew_mb: float, limit_mb: float
) -> None:
    """A load run's notes and verdict: no 5xx, wrong answer or lost request, malformed
    requests were sent, a clean stop, /health after it and RSS growth within ``limit_mb``."""
    problems = stop_problems(server)
    load.notes += [n for n in res.server_errors + res.wrong + res.transport if n][:8]
    load.notes += problems
    if health != 200:
        load.notes.append(f"/health after the load: {health}")
    if grew_mb > limit_mb:
        load.notes.append(f"RSS grew {grew_mb:.0f} MB under the load (allowed {limit_mb:.0f})")
    load.ok = (
        grew_mb <= limit_mb
        and not res.server_errors
        and not res.wrong
        and not res.transport
        and not problems
        and health == 200
        and res.malformed > 0
    )


def stop_problems(server: Server) -> list[str]:
    """What went wrong when the server was stopped, if anything."""
    if server.exit_code is None:
        return [f"SIGTERM: still running after {server.graceful_s + STOP_MARGIN_S}s (killed)"]
    if server.exit_code != 0:
        return [f"SIGTERM: exit code {server.exit_code}: {server.tail(300)!r}"]
    if server.stop_s is not None and server.stop_s > server.graceful_s:
        return [f"SIGTERM: exit took {server.stop_s}s, over the {server.graceful_s}s grace period"]
    return []


# -- request bodies -----------------------------------------------------------------------------
def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few KB of zlib that
    expands to width*height*3 bytes as RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = (b"\0" * (1 + (width + 7) // 8)) * 1000
    z = zlib.compressobj(9)
    body = b"".join(z.compress(rows) for _ in range(height // 1000))
    body += z.compress(rows[: (height % 1000) * (len(rows) // 1000)]) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


WORDS = ["the", "a", "film", "was", "great", "bad", "not", "good", "at", "all", "Ada", "Berlin"]


def text_field(deploy: dict[str, Any]) -> str:
    return {"cls": "texts", "ner": "texts", "pair": "pairs", "mrc": "questions"}[deploy["task"]]


def ctr_row(rng: random.Random) -> str:
    dense = ["" if rng.random() < 0.2 else str(rng.randint(0, 500)) for _ in range(13)]
    sparse = ["" if rng.random() < 0.1 else f"{rng.getrandbits(32):08x}" for _ in range(26)]
    return "\t".join(dense + sparse)


def valid_body(kit: str, deploy: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One ordinary request for ``kit``'s ``POST /predict``."""
    if kit == "toy":
        width = int(deploy["num_features"])
        return {
            "inputs": [[rng.gauss(0, 1) for _ in range(width)] for _ in range(rng.randint(1, 4))]
        }
    if kit in ("seg", "det"):
        h, w = rng.randint(32, 128), rng.randint(32, 128)
        image = np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (h, w, 3), np.uint8)
        body: dict[str, Any] = {"image": b64(png(image))}
        if kit == "seg":
            body["format"] = rng.choice(["png", "rle", "both"])
        elif rng.random() < 0.5:
            body["score_threshold"] = round(rng.random(), 3)
        return body
    if kit == "text":
        n = rng.randint(1, 4)
        sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))  # noqa: E731
        name = text_field(deploy)
        if name == "texts":
            return {"texts": [sentence() for _ in range(n)]}
        if name == "pairs":
            return {"pairs": [[sentence(), sentence()] for _ in range(n)]}
        return {"questions": [{"question": sentence(), "context": sentence()} for _ in range(n)]}
    if kit == "ctr":
        return {"rows": [ctr_row(rng) for _ in range(rng.randint(1, 8))]}
    raise ValueError(kit)


def odd_bodies(kit: str, deploy: dict[str, Any]) -> list[dict[str, Any]]:
    """Valid-by-schema inputs at the edges (tiny, thin, grey, alpha, 16-bit images; empty and
    long texts; all-empty rows): each must get 200 or a 4xx, never a 5xx."""
    if kit in ("seg", "det"):
        g = np.random.default_rng(1)
        images = [
            g.integers(0, 255, (1, 1, 3), np.uint8),
            g.integers(0, 255, (1, 300, 3), np.uint8),
            g.integers(0, 255, (300, 2, 3), np.uint8),
            g.integers(0, 255, (40, 40), np.uint8),  # greyscale
            g.integers(0, 255, (40, 40, 4), np.uint8),  # RGBA
        ]
        datas = [png(a) for a in images]
        buf = io.BytesIO()
        Image.fromarray(g.integers(0, 65535, (33, 47), np.uint16)).save(buf, "PNG")
        datas.append(buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(g.integers(0, 255, (50, 70, 3), np.uint8)).save(buf, "JPEG")
        datas.append(buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(g.integers(0, 255, (20, 30, 3), np.uint8)).save(buf, "GIF")
        datas.append(buf.getvalue())
        return [{"image": b64(d)} for d in datas]
    if kit == "toy":
        width = int(deploy["num_features"])
        return [
            {"inputs": [[0.0] * width]},
            {"inputs": [[3.0e38] * width]},
            {"inputs": [[-3.0e38, 3.0e38] * (width // 2)]},
            {"inputs": [[1e-45] * width] * 256},
        ]
    if kit == "text":
        name = text_field(deploy)
        texts = ["", " ", "\u200b", "é" * 3000, "\x00", "😀" * 50, "word " * 1000]
        if name == "texts":
            return [{"texts": [t]} for t in texts]
        if name == "pairs":
            return [{"pairs": [[t, t]]} for t in texts]
        return [{"questions": [{"question": t, "context": t}]} for t in texts]
    if kit == "ctr":
        return [
            {"rows": ["\t" * 38]},
            {"rows": ["1\t" + "\t" * 38]},  # with a label column
            {"rows": ["-5\t" * 13 + "x\t" * 25 + "x"]},
            {"rows": ["99999999999999999999\t" * 13 + "\t" * 25]},
        ]
    return []


def malformed_bodies(kit: str, valid: dict[str, Any]) -> list[bytes]:
    """Requests that must be refused with a 4xx: bad JSON, wrong types, unknown fields, NaN."""
    key = next(iter(valid))
    good = json.dumps(valid)
    out = [
        good[: len(good) // 2].encode(),  # truncated JSON
        b"\xff\xfe not json",
        b"",
        b"null",
        b"[]",
        json.dumps({key: 12345}).encode(),
        json.dumps({key: {"x": [1]}}).encode(),
        json.dumps({**valid, "unknown_field": 1}).encode(),
        json.dumps({"nothing": True}).encode(),
    ]
    if kit == "toy":
        width = len(valid["inputs"][0])
        out += [
            ("{" + f'"inputs": [[{", ".join(["NaN"] * width)}]]' + "}").encode(),
            ("{" + f'"inputs": [[{", ".join(["Infinity"] * width)}]]' + "}").encode(),
            json.dumps({"inputs": [["abc"] * width]}).encode(),
            json.dumps({"inputs": [[1.0] * (width + 1)]}).encode(),
        ]
    elif kit == "det":
        out += [
            ('{"image": ' + json.dumps(valid["image"]) + ', "score_threshold": NaN}').encode(),
            json.dumps({"image": valid["image"], "score_threshold": 2}).encode(),
            json.dumps({"image": "not base64 !!"}).encode(),
        ]
    elif kit == "seg":
        out += [
            json.dumps({"image": valid["image"], "format": "jpeg"}).encode(),
            json.dumps({"image": b64(b"not an image")}).encode(),
            b'{"image": NaN}',
        ]
    elif kit == "ctr":
        out += [b'{"rows": [NaN]}', json.dumps({"rows": ["1\t2"]}).encode()]
    elif kit == "text":
        out += [b'{"texts": [NaN]}', json.dumps({"texts": [["a", "b"]]}).encode()]
    return out


# -- schemathesis ------------------------------------------------------------------------------
def fuzz_operation(
    operation: Any, mode: Any, url: str, session: Any, examples: int, failures: list[str]
) -> int:
    """Up to ``examples`` cases of one operation in one generation mode; the cases sent."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error

    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        nonlocal sent
        response = case.call(base_url=url, session=session, timeout=CLIENT_TIMEOUT_S)
        sent += 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:  # schemathesis reports failed checks as exceptions
            failures.append(
                f"{operation.label} {mode.value}: {response.status_code} "
                f"{response.text[:200]!r} <- {case.as_curl_command()[:300]}"
                if len(failures) < 5
                else type(exc).__name__
            )

    try:
        check()
    except Unsatisfiable:
        pass  # nothing to make invalid (a GET without parameters): not applicable
    except Exception as exc:  # generation itself failed: say so, do not hide it
        failures.append(f"{operation.label} {mode.value}: {type(exc).__name__}: {exc}")
    return sent


def fuzz_schema(url: str, examples: int) -> tuple[int, list[str]]:
    """Every operation of the server's own schema, positive and negative cases, checked with
    schemathesis's ``not_a_server_error``; returns (cases sent, failures)."""
    import requests
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent = 0
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                sent += fuzz_operation(operation, mode, url, session, examples, failures)
    return sent, failures


# -- load ----------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    sent: int = 0
    valid_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # an answer of the wrong class
    transport: list[str] = field(default_factory=list)  # no answer at all
    bombs: int = 0
    bomb_ms: list[float] = field(default_factory=list)
    malformed: int = 0
    oversized: int = 0
    odd: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, bucket: list[str], text: str) -> None:
        with self.lock:
            if len(bucket) < 5:
                bucket.append(text)
            else:
                bucket.append("")


@dataclass(frozen=True)
class Call:
    """One request of a load run. ``kind``: valid (200, and ``check`` finds nothing wrong
    with its body), malformed (a 4xx), oversized (413), bomb (413, quickly) or odd (anything
    but a 5xx)."""

    kind: str
    path: str
    body: bytes
    check: Callable[[httpx.Response], str | None] | None = None


def drive(url: str, pick: Callable[[int], Call], clients: int, seconds: float) -> LoadResult:
    """``clients`` threads posting ``pick(0)``, ``pick(1)``, ... for ``seconds``."""
    counter = itertools.count()
    result = LoadResult()
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json"}

    def client(tid: int) -> None:
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as http:
            while time.monotonic() < deadline:
                call = pick(next(counter))
                kind, body = call.kind, call.body
                t0 = time.perf_counter()
                try:
                    r = http.post(call.path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    result.note(result.transport, f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1000
                status = r.status_code
                with result.lock:
                    result.sent += 1
                    result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
                    if kind == "valid":
                        result.valid_ms.append(ms)
                    elif kind == "bomb":
                        result.bombs += 1
                        result.bomb_ms.append(ms)
                    elif kind == "malformed":
                        result.malformed += 1
                    elif kind == "oversized":
                        result.oversized += 1
                    else:
                        result.odd += 1
                what = f"{kind} {call.path} {body[:80]!r} -> {status} {r.text[:200]!r}"
                wrong = {
                    "valid": status != 200,
                    "malformed": not 400 <= status < 500,
                    "oversized": status != 413,
                    "bomb": status != 413 or ms > BOMB_MAX_MS,
                    "odd": False,
                }[kind]
                if status >= 500:
                    result.note(result.server_errors, what)
                elif wrong:
                    result.note(result.wrong, f"{what} in {ms:.0f} ms")
                elif call.check is not None and (problem := call.check(r)):
                    result.note(result.wrong, f"{what[:160]}: {problem}")

    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(client, range(clients)))
    return result


def run_load(
    url: str, kit: str, deploy: dict[str, Any], clients: int, seconds: float, seed: int = 0
) -> LoadResult:
    """``clients`` threads posting for ``seconds``: about 1% malformed bodies, about 0.7%
    image bombs (seg/det), a few edge-case inputs, the rest ordinary requests."""
    rng = random.Random(seed)
    pool = [json.dumps(valid_body(kit, deploy, rng)).encode() for _ in range(64)]
    odd = [json.dumps(b).encode() for b in odd_bodies(kit, deploy)]
    bad = [b for _ in range(3) for b in malformed_bodies(kit, valid_body(kit, deploy, rng))]
    bomb = (
        json.dumps({"image": b64(png_bomb(BOMB_SIDE, BOMB_SIDE))}).encode()
        if kit in ("seg", "det")
        else None
    )

    def pick(n: int) -> Call:
        if n % 100 == 37:
            return Call("malformed", "/predict", bad[(n // 100) % len(bad)])
        if bomb is not None and n % 150 == 11:
            return Call("bomb", "/predict", bomb)
        if n % 50 == 5:
            return Call("odd", "/predict", odd[(n // 50) % len(odd)] if odd else pool[0])
        return Call("valid", "/predict", pool[n % len(pool)])

    return drive(url, pick, clients, seconds)


def percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


def load_deploy(work: Path, kit: str) -> dict[str, Any]:
    return yaml.safe_load((build(work, kit).export / "deploy.yaml").read_text())


def kit_rows(work: Path, kit: str, quick: bool) -> list[Row]:
    """schemathesis, then load, on one server of ``kit``; then SIGTERM."""
    deploy = load_deploy(work, kit)
    fuzz = Row("schemathesis", kit, {})
    load = Row("load", kit, {})
    with serving(work, kit, "main") as server:
        with Timer() as t:
            cases, failures = fuzz_schema(server.url, 10 if quick else 60)
        fuzz.figures = {"cases": cases, "failures": len(failures), "s": t.seconds}
        fuzz.ok = not failures and cases > 0
        fuzz.notes += [f for f in failures if f][:5]

        rss0 = server.rss_mb()
        clients, seconds = (8, 3.0) if quick else (32, 60.0)
        res = run_load(server.url, kit, deploy, clients, seconds)
        rss1 = server.rss_mb()
        health = httpx.get(f"{server.url}/health", timeout=10).status_code
    load.figures = {
        "req": res.sent,
        "5xx": len(res.server_errors),
        "p99ms": percentile(res.valid_ms, 99),
        "rss0MB": rss0,
        "growMB": round(rss1 - rss0, 1),
        "bad": res.malformed,
        "bombs": res.bombs,
        "bombmax": round(max(res.bomb_ms), 1) if res.bomb_ms else "-",
        "lost": len(res.transport),
        "stop_s": server.stop_s,
    }
    judge_load(load, res, server, health, rss1 - rss0, RSS_GROWTH_MAX_MB)
    load.ok = load.ok and (kit not in ("seg", "det") or res.bombs > 0)
    return [fuzz, load]


# -- the text vector service -------------------------------------------------------------------
def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))


def vectors_check(n: int, d: int, route: str) -> Callable[[httpx.Response], str | None]:
    """What is wrong with a 200 to a valid vector request of ``n`` inputs whose vectors
    should have ``d`` components (None: nothing)."""

    def check(r: httpx.Response) -> str | None:
        try:
            body = r.json()
        except ValueError:
            return "not JSON"
        if route == "/encode":
            vectors = body.get("vectors")
            if not isinstance(vectors, list) or len(vectors) != n:
                return f"{len(vectors) if isinstance(vectors, list) else vectors!r} vectors"
            if body.get("dim") != d:
                return f"dim {body.get('dim')!r}, expected {d}"
        else:
            data = body.get("data")
            if not isinstance(data, list) or len(data) != n:
                return f"{len(data) if isinstance(data, list) else data!r} embeddings"
            if [e.get("index") for e in data] != list(range(n)):
                return "indices out of order"
            vectors = []
            for e in data:
                value = e.get("embedding")
                if isinstance(value, str):
                    raw = base64.b64decode(value)
                    value = np.frombuffer(raw, "<f4").tolist() if len(raw) % 4 == 0 else raw
                vectors.append(value)
        for v in vectors:
            if not isinstance(v, list) or len(v) != d:
                return f"a vector of {len(v) if isinstance(v, list) else type(v).__name__}, not {d}"
            if not all(math.isfinite(x) for x in v):
                return "a non-finite component"
        return None

    return check


def encoder_valid(rng: random.Random, dim: int) -> Call:
    """One ordinary request to ``/encode`` or ``/v1/embeddings``: 1 to 8 short texts, now
    and then pre-split words, tokens shown, base64 vectors or fewer dimensions."""
    n = rng.randint(1, 8)
    if rng.random() < 0.5:
        body: dict[str, Any] = {"texts": [sentence(rng) for _ in range(n)]}
        if rng.random() < 0.2:
            body = {"texts": [t.split() for t in body["texts"]], "is_tokenized": True}
        if rng.random() < 0.2:
            body["show_tokens"] = True
        return Call("valid", "/encode", json.dumps(body).encode(), vectors_check(n, dim, "/encode"))
    texts = [sentence(rng) for _ in range(n)]
    body = {"input": texts[0] if n == 1 and rng.random() < 0.5 else texts, "model": "minilm"}
    if rng.random() < 0.3:
        body["encoding_format"] = "base64"
    d = dim
    if rng.random() < 0.2:
        d = body["dimensions"] = rng.choice([1, 64, 128, dim])
    route = "/v1/embeddings"
    return Call("valid", route, json.dumps(body).encode(), vectors_check(n, d, route))


def encoder_odd(dim: int) -> list[Call]:
    """Valid-by-schema inputs at the edges (blank, invisible, NUL, lone-surrogate, emoji,
    over-long-for-the-model texts, a text of exactly the size limit, a full request): 200 or
    4xx, never 5xx."""
    texts = [
        "",
        " ",
        "\u200b",
        "\x00",
        "\ud800",
        "é" * 3000,
        "😀" * 50,
        "word " * 1000,
        "a" * 20_000,
        "\u202emixed RTL مرحبا\u202c",
    ]
    calls = [Call("odd", "/encode", json.dumps({"texts": [t]}).encode()) for t in texts]
    calls += [Call("odd", "/v1/embeddings", json.dumps({"input": t}).encode()) for t in texts]
    edges = [
        ("/encode", {"texts": [["", "a"]], "is_tokenized": True}),
        ("/encode", {"texts": [["x" * 19_000]], "is_tokenized": True}),
        ("/encode", {"texts": ["a b"] * 256, "show_tokens": True}),  # serve.max_items_per_request
        ("/v1/embeddings", {"input": ["a b"] * 256}),
        ("/v1/embeddings", {"input": "x", "dimensions": dim, "encoding_format": "base64"}),
        ("/v1/embeddings", {"input": ["x"], "user": "u" * 5000}),
    ]
    calls += [Call("odd", path, json.dumps(body).encode()) for path, body in edges]
    return calls


def encoder_bad(dim: int) -> list[Call]:
    """Requests that must be refused: malformed ones with a 4xx, oversized ones with 413."""
    good = json.dumps({"texts": ["a film", "not good at all"]})
    generic = [
        good[: len(good) // 2].encode(),
        b"\xff\xfe not json",
        b"",
        b"null",
        b"[]",
        json.dumps({"nothing": True}).encode(),
    ]
    encode = [
        *generic,
        json.dumps({"texts": 12345}).encode(),
        json.dumps({"texts": {"x": [1]}}).encode(),
        json.dumps({"texts": []}).encode(),
        json.dumps({"texts": ["a", 1]}).encode(),
        json.dumps({"texts": ["a"], "unknown_field": 1}).encode(),
        json.dumps({"texts": ["a b"], "is_tokenized": True}).encode(),  # strings, not word lists
        json.dumps({"texts": [["a", "b"]]}).encode(),  # word lists without is_tokenized
        json.dumps({"texts": [[]], "is_tokenized": True}).encode(),
        json.dumps({"texts": ["a"], "show_tokens": 5}).encode(),
        b'{"texts": [NaN]}',
    ]
    embeddings = [
        *generic,
        json.dumps({"input": []}).encode(),
        json.dumps({"input": 123}).encode(),
        json.dumps({"input": ["a", None]}).encode(),
        json.dumps({"input": [[101, 102]]}).encode(),  # token ids: not served
        json.dumps({"input": "a", "encoding_format": "hex"}).encode(),
        json.dumps({"input": "a", "dimensions": 0}).encode(),
        json.dumps({"input": "a", "dimensions": -1}).encode(),
        json.dumps({"input": "a", "dimensions": dim + 1}).encode(),
        json.dumps({"input": "a", "dimensions": 10**30}).encode(),
        json.dumps({"input": "a", "dimensions": 1.5}).encode(),
        json.dumps({"input": "a", "extra": True}).encode(),
        b'{"input": "a", "dimensions": NaN}',
    ]
    oversized = [
        ("/encode", {"texts": ["a" * 20_001]}),  # one text over the limit
        ("/encode", {"texts": [["ab"] * 7_000], "is_tokenized": True}),  # 20999 with spaces
        ("/encode", {"texts": ["word " * 3_800] * 22}),  # 418000 characters in all
        ("/encode", {"texts": ["a"] * 257}),  # more inputs than serve.max_items_per_request
        ("/v1/embeddings", {"input": "é" * 20_001}),
        ("/v1/embeddings", {"input": ["x" * 19_000] * 110}),  # > 2 MB body
    ]
    groups = [
        [Call("malformed", "/encode", b) for b in encode],
        [Call("malformed", "/v1/embeddings", b) for b in embeddings],
        [Call("oversized", p, json.dumps(b).encode()) for p, b in oversized],
    ]  # interleaved: even a short run sends some of each
    return [c for row in itertools.zip_longest(*groups) for c in row if c is not None]


def run_encoder_load(url: str, dim: int, clients: int, seconds: float, seed: int = 0) -> LoadResult:
    """``clients`` threads on both vector routes for ``seconds``: about 1% malformed or
    oversized requests, 2% edge cases, the rest ordinary ones whose vectors are counted."""
    rng = random.Random(seed)
    pool = [encoder_valid(rng, dim) for _ in range(128)]
    odd = encoder_odd(dim)
    bad = encoder_bad(dim)

    def pick(n: int) -> Call:
        if n % 100 == 7:  # early: a short (--quick) run sends some too
            return bad[(n // 100) % len(bad)]
        if n % 50 == 5:
            return odd[(n // 50) % len(odd)]
        return pool[n % len(pool)]

    return drive(url, pick, clients, seconds)


def encoder_rows(work: Path, quick: bool) -> list[Row]:
    """``e2ekit text serve --model minilm``: schemathesis on both vector routes, then the
    load; RSS growth within ENCODER_GROWTH; then SIGTERM."""
    fuzz = Row("schemathesis", ENCODER, {})
    load = Row("load", ENCODER, {})
    with serving(work, "text", "encoder", model=ENCODER_MODEL) as server:
        probe = httpx.post(f"{server.url}/encode", json={"texts": ["probe"]}, timeout=60)
        probe.raise_for_status()
        dim = int(probe.json()["dim"])
        with Timer() as t:
            cases, failures = fuzz_schema(server.url, 10 if quick else 60)
        fuzz.figures = {"cases": cases, "failures": len(failures), "s": t.seconds}
        fuzz.ok = not failures and cases > 0
        fuzz.notes += [f for f in failures if f][:5]

        rss0 = server.rss_mb()
        clients, seconds = (8, 4.0) if quick else (32, 60.0)
        res = run_encoder_load(server.url, dim, clients, seconds)
        rss1 = server.rss_mb()
        health = httpx.get(f"{server.url}/health", timeout=10).status_code
    share, extra = ENCODER_GROWTH
    limit = share * rss0 + extra
    load.figures = {
        "req": res.sent,
        "5xx": len(res.server_errors),
        "wrong": len(res.wrong),
        "p50ms": percentile(res.valid_ms, 50),
        "p99ms": percentile(res.valid_ms, 99),
        "rss0MB": rss0,
        "rss1MB": rss1,
        "growMB": round(rss1 - rss0, 1),
        "bad": res.malformed,
        "big": res.oversized,
        "odd": res.odd,
        "lost": len(res.transport),
        "stop_s": server.stop_s,
    }
    judge_load(load, res, server, health, rss1 - rss0, limit)
    load.ok = load.ok and len(res.valid_ms) > 0
    return [fuzz, load]


# -- backpressure and timeouts -------------------------------------------------------------------
def backpressure_row(work: Path, quick: bool, kit: str = "toy") -> Row:
    """A tiny queue under a flood: some 503s, each with Retry-After, no other 5xx, then healthy."""
    deploy = load_deploy(work, kit)
    rng = random.Random(1)
    bodies = [json.dumps(valid_body(kit, deploy, rng)).encode() for _ in range(32)]
    overrides = [
        "serve.max_queue=4",
        "serve.max_items_per_request=4",
        "serve.max_batch_size=2",
        "serve.max_wait_ms=20",
    ]
    clients, per_client = (32, 10) if quick else (64, 40)
    statuses: dict[int, int] = {}
    problems: list[str] = []
    lock = threading.Lock()
    with serving(work, kit, "backpressure", overrides) as server:

        def flood(tid: int) -> None:
            with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http:
                for i in range(per_client):
                    try:
                        r = http.post("/predict", content=bodies[(tid + i) % len(bodies)])
                    except httpx.HTTPError as exc:
                        with lock:
                            problems.append(f"no answer: {type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 503 and not r.headers.get("retry-after"):
                            problems.append("503 without Retry-After")
                        elif r.status_code not in (200, 503):  # any other 5xx, or a 4xx
                            problems.append(f"{r.status_code}: {r.text[:200]!r}")

        with ThreadPoolExecutor(clients) as ex:
            list(ex.map(flood, range(clients)))
        health = httpx.get(f"{server.url}/health", timeout=10).status_code
        after = httpx.post(f"{server.url}/predict", content=bodies[0], timeout=10).status_code
    problems += stop_problems(server)
    if health != 200 or after != 200:
        problems.append(f"after the flood: /health {health}, /predict {after}")
    n503 = statuses.get(503, 0)
    if not n503:
        problems.append("no 503 under the flood: the queue limit never applied")
    row = Row(
        "backpressure",
        kit,
        {
            "req": sum(statuses.values()),
            "200": statuses.get(200, 0),
            "503": n503,
            "other": sum(v for k, v in statuses.items() if k not in (200, 503)),
            "stop_s": server.stop_s,
        },
    )
    row.notes = sorted(set(problems))[:8]
    row.ok = not problems
    return row


def timeout_row(work: Path, quick: bool, kit: str = "seg") -> Row:
    """A tiny ``serve.request_timeout_s`` (as long as the batch window, so timeouts and batch
    wake-ups coincide) under concurrent clients: every request ends as a quick 504 with a
    JSON error (or a 200 that made it in time), never a hang or a 500."""
    deploy = load_deploy(work, kit)
    rng = random.Random(2)
    bodies = [json.dumps(valid_body(kit, deploy, rng)).encode() for _ in range(8)]
    clients, per_client = (8, 16) if quick else (16, 40)
    problems: list[str] = []
    statuses: dict[int, int] = {}
    times: list[float] = []
    lock = threading.Lock()
    overrides = ["serve.request_timeout_s=0.002", "serve.max_wait_ms=2"]
    with serving(work, kit, "timeout", overrides) as server:

        def one(tid: int) -> None:
            with httpx.Client(base_url=server.url, timeout=HANG_S) as http:
                for i in range(per_client):
                    t0 = time.perf_counter()
                    try:
                        r = http.post("/predict", content=bodies[(tid + i) % len(bodies)])
                    except httpx.HTTPError as exc:
                        with lock:
                            problems.append(f"no answer in {HANG_S}s: {type(exc).__name__}")
                        return  # a hung server: one wait per client is enough
                    try:
                        detail = r.json().get("detail")
                    except (ValueError, AttributeError):
                        detail = None
                    with lock:
                        times.append((time.perf_counter() - t0) * 1000)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 504 and not isinstance(detail, str):
                            problems.append(f"504 without a JSON detail: {r.text[:200]!r}")
                        elif r.status_code not in (200, 504):
                            problems.append(f"{r.status_code}: {r.text[:200]!r}")

        with ThreadPoolExecutor(clients) as ex:
            list(ex.map(one, range(clients)))
        try:
            health: int | str = httpx.get(f"{server.url}/health", timeout=HANG_S).status_code
        except httpx.HTTPError as exc:
            health = type(exc).__name__
    problems += stop_problems(server)
    if health != 200:
        problems.append(f"/health after the timeouts: {health}")
    if not statuses.get(504):
        problems.append("no 504: the timeout never applied")
    row = Row(
        "timeout",
        kit,
        {
            "req": sum(statuses.values()),
            "504": statuses.get(504, 0),
            "200": statuses.get(200, 0),
            "maxms": round(max(times), 1) if times else "-",
            "stop_s": server.stop_s,
        },
    )
    row.notes = sorted(set(problems))[:8]
    row.ok = not problems
    return row


def guarded(part: str, target: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """A part that cannot even run is a failed row, not a crash of the whole module."""
    try:
        return fn()
    except Exception as exc:
        return [Row(part, target, {}, ok=False, notes=[f"{type(exc).__name__}: {exc}"[:2000]])]


def run(work: Path, quick: bool = False, kits: Sequence[str] = TARGETS) -> list[Row]:
    """Each target's server; backpressure (on toy) and timeouts (on seg) when those kits are
    among ``kits``."""
    rows: list[Row] = []
    for kit in kits:
        if kit == ENCODER:
            rows += guarded("servers", kit, lambda: encoder_rows(work, quick))
        else:
            rows += guarded("servers", kit, lambda kit=kit: kit_rows(work, kit, quick))
    if "toy" in kits:
        rows += guarded("backpressure", "toy", lambda: [backpressure_row(work, quick)])
    if "seg" in kits:
        rows += guarded("timeout", "seg", lambda: [timeout_row(work, quick)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new one)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--kits", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    args = parser.parse_args()
    kits = [k for k in args.kits.split(",") if k]
    unknown = sorted(set(kits) - set(TARGETS))
    if unknown:
        parser.error(f"--kits: unknown {', '.join(unknown)} (choose from {', '.join(TARGETS)})")
    work = args.work or Path(tempfile.mkdtemp(prefix="e2ekit-servers-"))
    work.mkdir(parents=True, exist_ok=True)
    with Timer() as t:
        rows = run(work, args.quick, kits)
    print_rows(rows)
    print(f"servers: {t.seconds}s in {work}")


if __name__ == "__main__":
    main()
