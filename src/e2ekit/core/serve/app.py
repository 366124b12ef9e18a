"""The generic FastAPI model server every kit plugs its endpoints into.

A kit describes each POST route as an :class:`Endpoint` (request schema, pre-processing
into items, a synchronous batch function, post-processing); :func:`create_app` adds
dynamic batching, input limits, ``/health``, ``/metrics`` and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2ekit.core.errors import ServiceUnavailable
from e2ekit.core.serve.auth import ApiKeyMiddleware
from e2ekit.core.serve.batcher import (
    BatcherClosedError,
    BatchFailedError,
    DynamicBatcher,
    QueueFullError,
)
from e2ekit.core.serve.metrics import UNMATCHED_PATH, MetricsMiddleware, ServeMetrics
from e2ekit.core.serve.settings import ServeSettings

log = logging.getLogger("e2ekit.serve")

# Kits' post-processing naturally yields numpy scalars/arrays; send them as plain JSON.
_NUMPY: dict[Any, Callable[[Any], Any]] = {
    np.ndarray: lambda a: a.tolist(),
    np.generic: lambda v: v.item(),
}
RESERVED_PATHS = frozenset({"/health", "/metrics", "/docs", "/redoc", "/openapi.json"})


class BadRequest(Exception):
    """Raised by ``Endpoint.to_items`` for input the schema accepted but the kit cannot use
    (undecodable image, empty text...). Answered with ``status_code`` and the message."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        if not 400 <= status_code < 500:
            raise ValueError(f"BadRequest needs a 4xx status code, got {status_code}")
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass(frozen=True)
class Endpoint:
    """One POST route: ``request -> to_items -> run_batch (batched) -> to_response``.

    ``to_items`` and ``to_response`` run in a worker thread per request (decoding images is
    CPU work that must not block the event loop); ``run_batch`` runs on the app's single
    model thread, never concurrently with itself or another endpoint's ``run_batch``, and
    must return exactly one result per item. ``to_items`` may raise :class:`BadRequest`
    (-> its status, 400 by default) or ``ValueError`` (-> 422); :func:`current_settings` gives
    it the server's limits. ``to_response`` returns JSON-able data (numpy arrays/scalars and
    pydantic models are converted) or raises :class:`BadRequest` when the results show the
    input was unusable (e.g. it drove the model to non-finite scores). ``info`` (optional)
    returns JSON-able state that ``GET /health`` adds at each call, for what changes while
    the server runs (the model version it serves now).
    """

    path: str
    request_model: type[BaseModel]
    to_items: Callable[[Any], Sequence[Any]]
    run_batch: Callable[[list[Any]], Sequence[Any]]
    to_response: Callable[[Any, list[Any]], Any]
    summary: str | None = None
    info: Callable[[], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or "{" in self.path:
            raise ValueError(f"endpoint path must be a fixed path like '/predict': {self.path!r}")
        if not (isinstance(self.request_model, type) and issubclass(self.request_model, BaseModel)):
            raise TypeError(f"request_model of {self.path} must be a pydantic BaseModel subclass")


class ServeRuntime:
    """Per-app state behind ``app.state.serve``: batchers, metrics, shutdown flag."""

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.batchers: dict[str, DynamicBatcher] = {}
        self.accepting = False
        self.executor: ThreadPoolExecutor | None = None

    def begin_shutdown(self) -> None:
        """Stop taking new work (503) while in-flight requests finish; idempotent."""
        if self.accepting:
            log.info("serve: shutting down, refusing new requests")
        self.accepting = False


RETRY_LATER = {"Retry-After": "1"}

# The settings of the app handling the current request: set per request before ``to_items``
# runs (its worker thread inherits the context), so a kit's pre-processing applies the limits
# the server was started with (``serve.max_image_pixels``) without every kit passing them.
_SETTINGS: ContextVar[ServeSettings] = ContextVar("e2ekit_serve_settings")


def current_settings() -> ServeSettings:
    """The serving app's settings inside a request; the defaults anywhere else."""
    return _SETTINGS.get(None) or ServeSettings()


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _describe_errors(errors: Sequence[Any]) -> str:
    """'rows.0.1: Input should be a valid number; name: Field required' - names each field."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class JsonBodyMiddleware:
    """Reads every POST body to an endpoint as JSON, whatever its ``Content-Type`` says.

    The endpoints take JSON only, but ``curl -d`` labels its body
    ``application/x-www-form-urlencoded`` and scripts often send ``text/plain`` or nothing;
    FastAPI would hand those bodies to the schema as raw bytes (a confusing 422). The header
    is set to ``application/json`` instead, so such a body is parsed, and one that is not
    JSON gets the usual 400 "malformed JSON body".
    """

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Rejects bodies over ``max_bytes`` with 413 before any parsing.

    Checks ``Content-Length`` up front and counts the bytes actually received, so chunked
    uploads (no Content-Length) are bounded too; the body is buffered (it is parsed whole
    anyway) and replayed to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def _reject(self, scope: Scope, send: Send, status: int, detail: str) -> None:
        if self.on_reject is not None:
            self.on_reject(scope["path"], "too_large" if status == 413 else "bad_request")
        # Close the connection: the unread rest of the body must not be parsed as a request.
        response = _error(status, detail, {"Connection": "close"})
        await response(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds the limit of {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(scope, send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await self._reject(scope, send, 413, too_large)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # client left mid-upload: nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, send, 413, too_large)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for http.disconnect as usual

        await self.app(scope, replay, send)


async def _no_receive() -> Message:  # pragma: no cover - error responses never read
    raise RuntimeError("receive() is not available here")


def _route_for(endpoint: Endpoint, runtime: ServeRuntime) -> Callable[..., Any]:
    settings = runtime.settings
    metrics = runtime.metrics
    path = endpoint.path

    def fail(
        status: int, kind: str, detail: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.error(path, kind)
        return _error(status, detail, headers)

    def prepare(request: Any) -> list[Any]:
        return list(endpoint.to_items(request))

    def respond(request: Any, results: list[Any]) -> JSONResponse:
        # Encoding (and rendering: NaN is rejected) happens here so its errors are caught.
        content = jsonable_encoder(endpoint.to_response(request, results), custom_encoder=_NUMPY)
        return JSONResponse(content)

    async def route(body: BaseModel) -> Response:
        if not runtime.accepting:
            return fail(503, "shutting_down", "server is shutting down", RETRY_LATER)
        _SETTINGS.set(settings)
        try:
            items = await asyncio.to_thread(prepare, body)
        except BadRequest as exc:
            return fail(exc.status_code, "bad_request", exc.message)
        except ValueError as exc:
            return fail(422, "bad_request", str(exc) or type(exc).__name__)
        except Exception:
            log.exception("serve %s: to_items failed", path)
            return fail(500, "internal", "internal error while preparing the request")
        if len(items) > settings.max_items_per_request:
            return fail(
                413,
                "too_many_items",
                f"request has {len(items)} items; at most "
                f"{settings.max_items_per_request} are allowed per request",
            )
        batcher = runtime.batchers[path]
        try:
            future = batcher.enqueue(items)
        except QueueFullError as exc:
            return fail(503, "queue_full", str(exc), RETRY_LATER)
        except BatcherClosedError as exc:
            return fail(503, "shutting_down", str(exc), RETRY_LATER)
        try:
            results = await asyncio.wait_for(future, settings.request_timeout_s)
        except asyncio.TimeoutError:
            return fail(
                504, "timeout", f"no result within request_timeout_s={settings.request_timeout_s}"
            )
        except BatchFailedError as exc:
            if isinstance(exc.__cause__, ServiceUnavailable):
                return fail(503, "unavailable", str(exc.__cause__), RETRY_LATER)
            return fail(500, "batch_failed", f"{exc}; see the server log")
        except BatcherClosedError as exc:
            return fail(503, "shutting_down", str(exc), RETRY_LATER)
        try:
            return await asyncio.to_thread(respond, body, results)
        except BadRequest as exc:  # the model's answer for this input is unusable (not finite)
            return fail(exc.status_code, "bad_request", exc.message)
        except Exception:
            log.exception("serve %s: to_response failed", path)
            return fail(500, "internal", "internal error while building the response")

    # FastAPI reads the body schema from the signature; the model is only known at runtime.
    route.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=endpoint.request_model
            )
        ],
        return_annotation=Response,
    )
    route.__name__ = path.strip("/").replace("/", "_").replace("-", "_").replace(".", "_") or "root"
    return route


def create_app(
    endpoints: Sequence[Endpoint],
    settings: ServeSettings | None = None,
    *,
    model_info: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``endpoints`` with batching, limits, health and metrics.

    ``model_info`` (JSON-able) is echoed by ``GET /health`` so clients can check what runs.
    ``api_key``: every request but ``GET /health`` needs ``Authorization: Bearer <key>``
    (401 before its body is read; counted in ``/metrics`` as ``unauthorized``).
    Batchers start in the app's lifespan: run it under uvicorn (:func:`run_server`) or
    ``with TestClient(app)``.
    """
    settings = settings or ServeSettings()
    endpoints = list(endpoints)
    if not endpoints:
        raise ValueError("create_app needs at least one Endpoint")
    paths = [ep.path for ep in endpoints]
    path_set = frozenset(paths)
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ValueError(f"duplicate endpoint paths: {duplicates}")
    reserved = sorted(set(paths) & RESERVED_PATHS)
    if reserved:
        raise ValueError(f"endpoint paths {reserved} are reserved by the server")
    info = jsonable_encoder(dict(model_info or {}))

    metrics = ServeMetrics(settings.max_batch_size)
    runtime = ServeRuntime(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One model thread for all endpoints: the model is never called concurrently.
        runtime.executor = ThreadPoolExecutor(1, thread_name_prefix="e2ekit-model")
        runtime.batchers.clear()
        for ep in endpoints:
            batcher = DynamicBatcher(
                ep.run_batch,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue=settings.max_queue,
                executor=runtime.executor,
                name=ep.path,
                on_batch=metrics.batch_hook(ep.path),
            )
            batcher.start()
            metrics.track_queue(ep.path, lambda b=batcher: b.pending)
            runtime.batchers[ep.path] = batcher
        runtime.accepting = True
        try:
            yield
        finally:
            runtime.begin_shutdown()
            await asyncio.gather(
                *(b.close(timeout=settings.graceful_timeout_s) for b in runtime.batchers.values())
            )
            runtime.executor.shutdown(wait=False, cancel_futures=True)
            log.info("serve: stopped")

    app = FastAPI(
        title=str(info.get("name", "e2ekit model server")),
        lifespan=lifespan,
    )
    app.state.serve = runtime

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        label = request.url.path if request.url.path in path_set else UNMATCHED_PATH
        if any(err.get("type") == "json_invalid" for err in errors):
            reason = next((e.get("ctx", {}).get("error") for e in errors), None) or "invalid"
            metrics.error(label, "invalid_json")
            return _error(400, f"malformed JSON body: {reason}")
        metrics.error(label, "invalid_request")
        return JSONResponse(
            {
                "detail": f"invalid request: {_describe_errors(errors)}",
                "errors": [
                    {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                    for e in errors
                ],
            },
            status_code=422,
        )

    for ep in endpoints:
        app.router.add_api_route(
            ep.path,
            _route_for(ep, runtime),
            methods=["POST"],
            summary=ep.summary,
            response_class=JSONResponse,
        )

    live = [ep.info for ep in endpoints if ep.info is not None]

    @app.get("/health")
    async def health() -> JSONResponse:
        now = dict(info)
        for get in live:
            now.update(jsonable_encoder(get(), custom_encoder=_NUMPY))
        if runtime.accepting:
            return JSONResponse({**now, "status": "ok"})
        return JSONResponse({**now, "status": "shutting_down"}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        # Same negotiation as prometheus_client's own exporters (text or OpenMetrics).
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), headers={"Content-Type": content_type})

    # Clients (curl -d, scripts) often omit or mislabel Content-Type: parse bodies as JSON.
    app.add_middleware(JsonBodyMiddleware, paths=path_set)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        on_reject=lambda p, kind: metrics.error(p if p in path_set else UNMATCHED_PATH, kind),
    )
    if api_key:  # inside the metrics (refusals are counted), outside the body limit
        known = {*paths, *RESERVED_PATHS}
        app.add_middleware(
            ApiKeyMiddleware,
            key=api_key,
            on_reject=lambda p: metrics.error(p if p in known else UNMATCHED_PATH, "unauthorized"),
        )
    # Added last = outermost: it also counts responses the size limit sends.
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths={*paths, *RESERVED_PATHS})
    return app
