"""e2ekit.core.serve: batching, limits, errors, metrics and shutdown against real uvicorn."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ValidationError

import e2ekit.core.serve as serve_pkg
from e2ekit.core.serve import (
    BadRequest,
    BatcherClosedError,
    BatchFailedError,
    DynamicBatcher,
    Endpoint,
    ModelServer,
    QueueFullError,
    ServeClient,
    ServeError,
    ServeSettings,
    build_server,
    create_app,
)

FAIL = -999.0  # a row containing this makes the model raise
WAIT_S = 15.0  # upper bound of every wait in this file; only reached when a test fails


# -- a tiny numpy "model" -------------------------------------------------------------------
class SumModel:
    """Sums each row; records batch sizes; optionally blocks until released."""

    def __init__(self, gated: bool = False) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def run_batch(self, items: list[Any]) -> list[float]:
        self.sizes.append(len(items))
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise RuntimeError("test never released the model")
        if any(FAIL in row for row in items):
            raise RuntimeError("boom")
        return [float(np.asarray(row, dtype=np.float64).sum()) for row in items]


class Rows(BaseModel):
    rows: list[list[float]]


def to_items(request: Rows) -> list[list[float]]:
    for i, row in enumerate(request.rows):
        if not row:
            raise BadRequest(f"row {i} is empty")
    return request.rows


def sum_endpoint(model: SumModel, path: str = "/predict") -> Endpoint:
    # The response holds a numpy array, as kits' post-processing often does.
    return Endpoint(
        path, Rows, to_items, model.run_batch, lambda req, res: {"sums": np.asarray(res)}
    )


def rows_for(i: int) -> list[list[float]]:
    """Request i: 1-3 rows with distinct, exactly representable sums."""
    return [[float(i), k / 4] for k in range(i % 3 + 1)]


def expected_sums(i: int) -> list[float]:
    return [i + k / 4 for k in range(i % 3 + 1)]


# -- a real uvicorn server in a thread --------------------------------------------------------
@dataclass
class Running:
    app: FastAPI
    server: ModelServer
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture
def start_server() -> Iterator[Callable[..., Running]]:
    """Start ``create_app(...)`` under uvicorn on a free 127.0.0.1 port; stopped at teardown."""
    running: list[Running] = []

    def start(app: FastAPI, settings: ServeSettings) -> Running:
        server = build_server(app, settings, host="127.0.0.1", port=0, access_log=False)
        thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert thread.is_alive(), "server failed to start"
            assert time.monotonic() < deadline, "server did not start in time"
            time.sleep(0.01)
        run = Running(app, server, thread, server.url)
        running.append(run)
        return run

    yield start
    for run in running:
        if run.thread.is_alive():
            run.stop()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def samples(metrics_text: str, name: str, **labels: str) -> list[Any]:
    return [
        s
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def metric(metrics_text: str, name: str, **labels: str) -> float:
    found = samples(metrics_text, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0].value


def queue_depth(base_url: str, path: str = "/predict") -> float:
    text = httpx.get(f"{base_url}/metrics").text
    return metric(text, "e2ekit_serve_queue_depth", path=path)


def post(base_url: str, payload: Any, path: str = "/predict", **kw: Any) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=payload, timeout=WAIT_S, **kw)


def assert_good_request(base_url: str) -> None:
    r = post(base_url, {"rows": [[1.0, 2.0], [3.0]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"sums": [3.0, 3.0]}


# -- settings ---------------------------------------------------------------------------------
def test_settings_defaults_and_validation() -> None:
    s = ServeSettings()
    assert (s.host, s.port, s.max_batch_size, s.max_wait_ms) == ("127.0.0.1", 8000, 32, 5.0)
    assert (s.max_queue, s.max_request_bytes, s.max_items_per_request) == (1024, 2_000_000, 256)
    assert (s.request_timeout_s, s.graceful_timeout_s) == (30.0, 10.0)
    for bad in (
        {"max_batch_sise": 8},  # typo: extra keys are forbidden
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue": 0},
        {"max_items_per_request": 2000},  # larger than max_queue: could never be served
    ):
        with pytest.raises(ValidationError):
            ServeSettings(**bad)


def test_public_api_is_exported() -> None:
    for name in serve_pkg.__all__:
        assert getattr(serve_pkg, name) is not None


def test_create_app_rejects_bad_endpoints() -> None:
    model = SumModel()
    with pytest.raises(ValueError, match="duplicate"):
        create_app([sum_endpoint(model), sum_endpoint(model)], ServeSettings())
    with pytest.raises(ValueError, match="reserved"):
        create_app([sum_endpoint(model, "/health")], ServeSettings())
    with pytest.raises(ValueError, match="fixed path"):
        sum_endpoint(model, "predict")
    with pytest.raises(TypeError):
        Endpoint("/x", dict, to_items, model.run_batch, lambda r, x: {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BadRequest("nope", status_code=500)


# -- the batcher on its own -------------------------------------------------------------------
def test_batcher_packs_whole_requests_in_order() -> None:
    model = SumModel()

    async def main() -> list[list[float]]:
        b = DynamicBatcher(model.run_batch, max_batch_size=8, max_wait_s=0, max_queue=100)
        b.start()
        # All queued before the batcher runs: 3+3 fit in 8, the third request is not split.
        futures = [b.enqueue(rows_for(3 * i + 2)) for i in range(4)]
        results = await asyncio.gather(*futures)
        await b.close()
        return results

    results = asyncio.run(main())
    assert results == [expected_sums(3 * i + 2) for i in range(4)]
    assert model.sizes == [6, 6]


def test_batcher_splits_only_requests_larger_than_a_batch() -> None:
    model = SumModel()
    big = [[float(i)] for i in range(20)]

    async def main() -> tuple[list[float], list[float]]:
        b = DynamicBatcher(model.run_batch, max_batch_size=8, max_wait_s=0, max_queue=100)
        b.start()
        first, second = b.enqueue(big), b.enqueue([[1.0], [2.0]])
        out = await first, await second
        await b.close()
        return out

    big_out, small_out = asyncio.run(main())
    assert big_out == [float(i) for i in range(20)]
    assert small_out == [1.0, 2.0]
    assert model.sizes == [8, 8, 6]  # the 4-item tail of the big request + the small one


def test_batcher_failure_fails_only_its_batch_and_queue_limit() -> None:
    model = SumModel()

    async def main() -> None:
        b = DynamicBatcher(model.run_batch, max_batch_size=4, max_wait_s=0, max_queue=3)
        b.start()
        with pytest.raises(QueueFullError, match="queue is full"):
            b.enqueue([[1.0]] * 4)
        with pytest.raises(BatchFailedError, match="RuntimeError"):
            await b.submit([[FAIL]])
        assert await b.submit([[2.0, 3.0]]) == [5.0]
        await b.close()
        with pytest.raises(BatcherClosedError):
            b.enqueue([[1.0]])

    asyncio.run(main())


def test_batcher_cancelled_request_frees_its_queue_slots() -> None:
    model = SumModel(gated=True)

    async def main() -> None:
        b = DynamicBatcher(model.run_batch, max_batch_size=1, max_wait_s=0, max_queue=4)
        b.start()
        running = b.enqueue([[1.0]])
        while not model.entered.is_set():
            await asyncio.sleep(0.005)
        queued = b.enqueue([[2.0], [3.0], [4.0]])
        assert b.pending == 3
        queued.cancel()  # what a request timeout does
        await asyncio.sleep(0)
        assert b.pending == 0
        assert await b.submit([[5.0]] * 0) == []
        model.release.set()
        assert await running == [1.0]
        assert await b.submit([[5.0]]) == [5.0]
        await b.close()

    asyncio.run(main())
    assert model.sizes == [1, 1]  # the cancelled request never reached the model


def test_batcher_survives_a_request_cancelled_just_as_it_wakes() -> None:
    """A request timing out in the same loop turn as the batcher wakes for it (a busy server:
    both timers expire together) leaves a cancelled job at the head of the queue whose
    cleanup callback has not run yet; the batcher must drop it, not spin on it forever with
    the event loop blocked (no request, not even /health, answered again)."""
    model = SumModel()
    outcome: list[Any] = []

    async def main() -> None:
        b = DynamicBatcher(model.run_batch, max_batch_size=8, max_wait_s=0, max_queue=10)
        b.start()
        await asyncio.sleep(0)  # the batcher waits for work
        doomed = b.enqueue([[1.0]])  # wakes the batcher (its step is queued first)...
        doomed.cancel()  # ...and the cancellation's cleanup callback runs after it
        await asyncio.sleep(0)
        outcome.append(await b.submit([[2.0, 3.0]]))
        await b.close()
        outcome.append(b.pending)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(WAIT_S / 3)
    assert not thread.is_alive(), "the batcher blocked the event loop"
    assert outcome == [[5.0], 0]
    assert model.sizes == [1]  # the cancelled request never reached the model


def test_batcher_close_drains_without_waiting_for_the_batch_window() -> None:
    model = SumModel()

    async def main() -> None:
        # A 60 s batch window: only draining (not the window) can finish these in time.
        b = DynamicBatcher(model.run_batch, max_batch_size=64, max_wait_s=60, max_queue=100)
        b.start()
        futures = [b.enqueue(rows_for(i)) for i in range(5)]
        await b.close(timeout=WAIT_S / 3)
        assert [f.result() for f in futures] == [expected_sums(i) for i in range(5)]

    asyncio.run(main())


# -- the HTTP server ---------------------------------------------------------------------------
def test_concurrent_requests_are_answered_and_batched(start_server) -> None:
    model = SumModel(gated=True)
    settings = ServeSettings(max_batch_size=16, max_wait_ms=2.0)
    run = start_server(create_app([sum_endpoint(model)], settings), settings)
    n = 64
    total_items = sum(len(rows_for(i)) for i in range(n))

    with ServeClient(run.url) as client, ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.predict, {"rows": rows_for(i)}) for i in range(n)]
        # The first batch holds the model; wait until every other item is queued behind it.
        wait_until(model.entered.is_set, "the first batch")
        wait_until(lambda: queue_depth(run.url) + model.sizes[0] == total_items, "all items queued")
        model.release.set()
        answers = [f.result(timeout=WAIT_S) for f in futures]
        text = client.metrics_text()

    assert answers == [{"sums": expected_sums(i)} for i in range(n)]
    assert sum(model.sizes) == total_items
    assert max(model.sizes) > 1 and max(model.sizes) <= 16
    path = {"path": "/predict"}
    batches = metric(text, "e2ekit_serve_batch_size_count", **path)
    singles = metric(text, "e2ekit_serve_batch_size_bucket", le="1.0", **path)
    assert batches == len(model.sizes)
    assert batches - singles >= 1  # some batch held more than one item
    assert metric(text, "e2ekit_serve_batch_size_sum", **path) == total_items
    assert metric(text, "e2ekit_serve_requests_total", status="200", **path) == n
    assert metric(text, "e2ekit_serve_queue_depth", **path) == 0


def test_bad_inputs_get_4xx_and_the_server_keeps_working(start_server) -> None:
    model = SumModel()
    settings = ServeSettings(max_request_bytes=2000, max_items_per_request=8, max_queue=64)
    run = start_server(create_app([sum_endpoint(model)], settings), settings)
    url = f"{run.url}/predict"

    r = httpx.post(url, content=b'{"rows": [[1, 2]', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    assert_good_request(run.url)

    r = post(run.url, {"rows": [[1.0, "x"]]})
    assert r.status_code == 422 and "rows" in r.json()["detail"], r.text
    r = post(run.url, {"row": [[1.0]]})
    assert r.status_code == 422 and "rows" in r.json()["detail"] and "required" in r.text
    r = post(run.url, [[1.0]])
    assert r.status_code == 422
    assert_good_request(run.url)

    r = post(run.url, {"rows": [[1.0]] * 1000})  # Content-Length over the limit
    assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
    assert_good_request(run.url)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        yield b'{"rows": ['
        for _ in range(500):
            yield b"[1.0],"
        yield b"[1.0]]}"

    r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert_good_request(run.url)

    r = post(run.url, {"rows": [[1.0]] * 9})
    assert r.status_code == 413 and "at most 8" in r.json()["detail"]
    r = post(run.url, {"rows": [[1.0], []]})  # BadRequest from to_items
    assert r.status_code == 400 and r.json()["detail"] == "row 1 is empty"
    assert_good_request(run.url)

    assert httpx.get(url).status_code == 405
    assert post(run.url, {"rows": [[1.0]]}, path="/nope").status_code == 404
    # Content-Type omitted, or curl -d's form type, or text/plain: the body is still JSON.
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        headers = {"content-type": content_type} if content_type else {}
        r = httpx.post(url, content=b'{"rows": [[4.0]]}', headers=headers)
        assert r.status_code == 200 and r.json() == {"sums": [4.0]}, (content_type, r.text)
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = httpx.post(url, content=b"rows=4", headers=form)
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]

    text = httpx.get(f"{run.url}/metrics").text
    for status in ("200", "400", "413", "422", "405"):
        assert metric(text, "e2ekit_serve_requests_total", path="/predict", status=status) >= 1
    assert metric(text, "e2ekit_serve_requests_total", path="<unmatched>", status="404") == 1
    assert metric(text, "e2ekit_serve_errors_total", path="/predict", kind="too_large") == 2


def test_full_queue_answers_503(start_server) -> None:
    model = SumModel(gated=True)
    settings = ServeSettings(max_batch_size=1, max_queue=2, max_items_per_request=2)
    run = start_server(create_app([sum_endpoint(model)], settings), settings)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, run.url, {"rows": [[1.0]]})
        wait_until(model.entered.is_set, "the first batch")
        queued = [pool.submit(post, run.url, {"rows": [[float(i)]]}) for i in (2, 3)]
        wait_until(lambda: queue_depth(run.url) == 2, "two queued items")

        r = post(run.url, {"rows": [[4.0]]})
        assert r.status_code == 503 and "queue is full" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"

        model.release.set()
        assert first.result(WAIT_S).json() == {"sums": [1.0]}
        assert [f.result(WAIT_S).json() for f in queued] == [{"sums": [2.0]}, {"sums": [3.0]}]
    assert_good_request(run.url)
    text = httpx.get(f"{run.url}/metrics").text
    assert metric(text, "e2ekit_serve_errors_total", path="/predict", kind="queue_full") == 1


def test_model_exception_fails_that_request_only(start_server) -> None:
    model = SumModel()
    settings = ServeSettings()
    run = start_server(create_app([sum_endpoint(model)], settings), settings)

    r = post(run.url, {"rows": [[FAIL]]})
    assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
    assert_good_request(run.url)
    text = httpx.get(f"{run.url}/metrics").text
    assert metric(text, "e2ekit_serve_errors_total", path="/predict", kind="batch_failed") == 1
    assert metric(text, "e2ekit_serve_requests_total", path="/predict", status="500") == 1


def test_a_service_the_model_needs_being_down_is_503_with_retry_after(start_server) -> None:
    from e2ekit.core.errors import ServiceUnavailable

    class StoreDown(SumModel):
        def run_batch(self, items: list) -> list[float]:
            raise ServiceUnavailable("redis://127.0.0.1:1: cannot reach Redis")

    settings = ServeSettings()
    run = start_server(create_app([sum_endpoint(StoreDown())], settings), settings)
    r = post(run.url, {"rows": [[1.0]]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["detail"] == "redis://127.0.0.1:1: cannot reach Redis"


def test_slow_model_answers_504_then_recovers(start_server) -> None:
    model = SumModel(gated=True)
    settings = ServeSettings(request_timeout_s=0.2)
    run = start_server(create_app([sum_endpoint(model)], settings), settings)

    r = post(run.url, {"rows": [[1.0]]})
    assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]
    model.release.set()
    assert_good_request(run.url)


def test_health_metrics_and_client(start_server) -> None:
    model = SumModel()
    settings = ServeSettings()
    info = {"name": "sum", "kit": "toy", "version": 3}
    endpoints = [sum_endpoint(model), sum_endpoint(model, "/v1/sum")]
    run = start_server(create_app(endpoints, settings, model_info=info), settings)

    with ServeClient(run.url) as client:
        assert client.health() == {**info, "status": "ok"}
        assert client.predict({"rows": [[1.0, 1.5]]}) == {"sums": [2.5]}
        assert client.predict({"rows": [[2.0]]}, path="/v1/sum") == {"sums": [2.0]}
        with pytest.raises(ServeError) as err:
            client.predict({"rows": "nope"})
        assert err.value.status_code == 422 and "rows" in err.value.detail
        text = client.metrics_text()
        assert metric(text, "e2ekit_serve_requests_total", path="/predict", status="200") == 1
        assert metric(text, "e2ekit_serve_requests_total", path="/v1/sum", status="200") == 1
        assert metric(text, "e2ekit_serve_requests_total", path="/predict", status="422") == 1
        assert metric(text, "e2ekit_serve_request_latency_seconds_count", path="/predict") == 2

        schema = httpx.get(f"{run.url}/openapi.json").json()
        assert {"/predict", "/v1/sum"} <= set(schema["paths"])

        run.app.state.serve.begin_shutdown()  # what the server does when shutdown starts
        r = httpx.get(f"{run.url}/health")
        assert r.status_code == 503 and r.json()["status"] == "shutting_down"
        r = post(run.url, {"rows": [[1.0]]})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"]


def test_graceful_shutdown_finishes_in_flight_requests(start_server, capsys) -> None:
    model = SumModel(gated=True)
    settings = ServeSettings(max_batch_size=1, graceful_timeout_s=WAIT_S)
    app = create_app([sum_endpoint(model)], settings)
    run = start_server(app, settings)
    assert f"serving on {run.url}" in capsys.readouterr().out
    runtime = app.state.serve

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, run.url, {"rows": [[1.0, 2.0]]})
        wait_until(model.entered.is_set, "the first batch")
        queued = pool.submit(post, run.url, {"rows": [[5.0]]})
        wait_until(lambda: runtime.batchers["/predict"].pending == 1, "a queued request")

        run.server.should_exit = True
        wait_until(lambda: not runtime.accepting, "shutdown to start")
        model.release.set()
        assert running.result(WAIT_S).json() == {"sums": [3.0]}
        assert queued.result(WAIT_S).json() == {"sums": [5.0]}

    run.thread.join(WAIT_S)
    assert not run.thread.is_alive()
    assert not runtime.batchers["/predict"].accepting  # lifespan shutdown ran
    assert model.sizes == [1, 1]


def _raw_post(sock: socket.socket, payload: bytes) -> bytes:
    """Send one HTTP/1.1 POST /predict on ``sock``; the whole answer (b"" when the server
    closed the connection without one)."""
    head = (
        "POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionError:  # a reset: the request was dropped
        return b""
    return b"".join(chunks)


def test_sigterm_drain_answers_every_connection_before_closing(start_server) -> None:
    """Shutdown (what SIGTERM triggers) keeps listening while a request is in flight: a
    connection accepted before it gets a 503 rather than being closed unanswered, a new
    client gets a 503 rather than a refused connection, and the in-flight request completes."""
    model = SumModel(gated=True)
    settings = ServeSettings(max_batch_size=1, graceful_timeout_s=WAIT_S)
    app = create_app([sum_endpoint(model)], settings)
    run = start_server(app, settings)
    url = httpx.URL(run.url)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, run.url, {"rows": [[1.0, 2.0]]})
        wait_until(model.entered.is_set, "the first batch")
        with socket.create_connection((url.host, url.port), timeout=WAIT_S) as early:
            connections = run.server.server_state.connections
            wait_until(lambda: len(connections) == 2, "the early connection to be accepted")
            run.server.handle_exit(signal.SIGTERM, None)  # uvicorn's SIGTERM handler
            wait_until(lambda: not app.state.serve.accepting, "shutdown to start")
            answer = _raw_post(early, b'{"rows": [[5.0]]}')
        assert answer.startswith(b"HTTP/1.1 503"), answer
        late = post(run.url, {"rows": [[6.0]]})
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert run.thread.is_alive()  # still draining: the first request holds the model
        model.release.set()
        assert running.result(WAIT_S).json() == {"sums": [3.0]}
    run.thread.join(WAIT_S)
    assert not run.thread.is_alive()
    assert model.sizes == [1]


SERVE_SCRIPT = """
from pydantic import BaseModel
from e2ekit.core.serve import Endpoint, ServeSettings, create_app, run_server

class Rows(BaseModel):
    rows: list[list[float]]

endpoint = Endpoint(
    "/predict", Rows, lambda r: r.rows, lambda xs: [sum(x) for x in xs], lambda r, s: {"sums": s}
)
settings = ServeSettings(port=0)
run_server(create_app([endpoint], settings), settings)
"""


def test_sigterm_stop_exits_0() -> None:
    """A server stopped by SIGTERM (docker stop, Kubernetes) shuts down gracefully and exits
    with status 0, not killed by the signal it handled (exit 143 reads as a crash)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on "), (line, proc.stderr and proc.stderr.read())
        url = line.split()[-1]
        assert post(url, {"rows": [[1.0, 2.0]]}).json() == {"sums": [3.0]}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Application shutdown complete" in err


def test_kit_errors_map_to_clear_statuses(start_server) -> None:
    def strict_items(request: Rows) -> list[list[float]]:
        if len(request.rows) > 1:
            raise ValueError("send one row at a time")
        return request.rows

    def nan_response(request: Rows, results: list[Any]) -> dict[str, Any]:
        if results[0] == 0:
            return {"sums": [float("nan")]}  # not valid JSON: must be a clean 500
        return {"sums": results, "first": np.float32(results[0])}

    model = SumModel()
    settings = ServeSettings()
    endpoint = Endpoint("/strict", Rows, strict_items, model.run_batch, nan_response)
    run = start_server(create_app([endpoint], settings), settings)

    r = post(run.url, {"rows": [[1.0], [2.0]]}, path="/strict")
    assert r.status_code == 422 and r.json() == {"detail": "send one row at a time"}
    r = post(run.url, {"rows": [[0.0]]}, path="/strict")
    assert r.status_code == 500 and "building the response" in r.json()["detail"]
    r = post(run.url, {"rows": [[1.0, 0.5]]}, path="/strict")
    assert r.status_code == 200 and r.json() == {"sums": [1.5], "first": 1.5}


def test_api_key_guards_every_route_but_health() -> None:
    from fastapi.testclient import TestClient

    app = create_app([sum_endpoint(SumModel())], ServeSettings(), api_key="s3cret")
    with TestClient(app) as client:
        body = {"rows": [[1.0, 2.0]]}
        assert client.post("/predict", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/predict", json=body, headers=wrong).status_code == 401
        ok = client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["sums"] == [3.0]
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 401
        text = client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
        assert metric(text, "e2ekit_serve_errors_total", path="/predict", kind="unauthorized") == 2
