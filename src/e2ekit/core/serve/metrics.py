"""Prometheus metrics of one app, in its own registry so several apps never clash."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "e2ekit_serve"
#: Label for paths the app does not serve, so random 404 probes cannot blow up cardinality.
UNMATCHED_PATH = "<unmatched>"
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two 1, 2, 4, ... up to at least 128 and at least ``max_batch_size``."""
    buckets = [1]
    while buckets[-1] < max(128, max_batch_size):
        buckets.append(buckets[-1] * 2)
    return tuple(float(b) for b in buckets)


class ServeMetrics:
    """The server's metrics; ``render()`` is the ``/metrics`` body."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by path and status code.",
            ["path", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds", "HTTP request latency (receipt to last byte).",
            ["path"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Items per model call.",
            ["path"], buckets=batch_size_buckets(max_batch_size), registry=r,
        )  # fmt: skip
        self.batch_latency = Histogram(
            f"{PREFIX}_batch_latency_seconds", "Duration of one model call.",
            ["path"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Items queued and not yet handed to the model.",
            ["path"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            f"{PREFIX}_errors", "Failed requests by path and kind of failure.",
            ["path", "kind"], registry=r,
        )  # fmt: skip

    def track_queue(self, path: str, depth: Callable[[], float]) -> None:
        """Read the queue depth of ``path`` at scrape time (always current, no bookkeeping)."""
        self.queue_depth.labels(path=path).set_function(depth)

    def batch_hook(self, path: str) -> Callable[[int, float, bool], None]:
        """A batcher ``on_batch`` hook recording into this app's histograms."""
        sizes = self.batch_size.labels(path=path)
        latency = self.batch_latency.labels(path=path)

        def hook(size: int, seconds: float, ok: bool) -> None:
            sizes.observe(size)
            latency.observe(seconds)

        return hook

    def error(self, path: str, kind: str) -> None:
        self.errors.labels(path=path, kind=kind).inc()

    def render(self) -> bytes:
        """Prometheus text format (0.0.4) of this app's registry."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP response, including ones inner middleware
    (e.g. the body-size limit) sends before routing."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, known_paths: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = frozenset(known_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.known_paths else UNMATCHED_PATH
        status = 499  # nginx's "client closed request": no response was sent
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if status == 499:
                status = 500  # the server error middleware outside answers 500
            raise
        finally:
            self.metrics.requests.labels(path=path, status=str(status)).inc()
            self.metrics.latency.labels(path=path).observe(time.perf_counter() - started)
