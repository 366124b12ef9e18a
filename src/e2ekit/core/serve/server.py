"""Running an app under uvicorn with e2ekit's shutdown behaviour."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import uvicorn

from e2ekit.core.serve.settings import ServeSettings

DRAIN_POLL_S = 0.05  # how often the drain looks for requests still in flight


class ModelServer(uvicorn.Server):
    """A ``uvicorn.Server`` that turns the app to 503 the moment shutdown starts, then drains.

    uvicorn runs the app's lifespan shutdown only after in-flight requests finished; flipping
    earlier makes ``/health`` fail at once (load balancers stop routing here) while those
    requests, and the batches they wait on, still complete.

    uvicorn's own shutdown also closes at once the listening socket and every connection
    whose request it has not parsed yet: under load, requests clients sent before the signal
    (still in the accept backlog, or unread on an accepted connection) are then reset and get
    no answer at all. This server first drains: it keeps listening, answers newcomers 503
    (``Retry-After``) and waits until no request is in flight and no accepted connection
    awaits its first request, at two polls in a row (``DRAIN_POLL_S`` apart). The whole
    shutdown, drain included, stays within ``timeout_graceful_shutdown``
    (``serve.graceful_timeout_s``), after which uvicorn cancels what is left.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        state = getattr(config.app, "state", None)
        self.runtime = getattr(state, "serve", None)

    @property
    def url(self) -> str:
        """``http://host:port`` with the bound port (meaningful once started, also for port 0)."""
        host, port = self.config.host, self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets or []:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    port = sock.getsockname()[1]
                    break
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn re-raises the signal that stopped it once shutdown is done, so a graceful
        stop on SIGTERM would end the process killed by that signal (exit 143): supervisors
        (Docker, Kubernetes, CI) then report a crash. A SIGTERM that was served by a graceful
        shutdown is a clean exit instead; SIGINT is still re-raised (Ctrl-C: "interrupted")."""
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list) and not self.force_exit:
                    captured[:] = [s for s in captured if s != signal.SIGTERM]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"serving on {self.url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.runtime is not None:
            self.runtime.begin_shutdown()
        budget = self.config.timeout_graceful_shutdown
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        await self._drain(deadline)
        if deadline is not None:  # what the drain used comes out of uvicorn's own wait
            self.config.timeout_graceful_shutdown = max(0.0, deadline - loop.time())
        try:
            await super().shutdown(sockets=sockets)
        finally:
            self.config.timeout_graceful_shutdown = budget

    def _busy(self) -> bool:
        """A request in flight, or a connection still waiting for its first request (an HTTP
        protocol's ``cycle`` stays None until a request's headers arrived: the test uvicorn's
        own shutdown uses to close a connection without answering)."""
        state = self.server_state
        return bool(state.tasks) or any(
            getattr(conn, "cycle", False) is None for conn in state.connections
        )

    async def _drain(self, deadline: float | None) -> None:
        """Listen on until the server is idle at two polls in a row, or until ``deadline``."""
        loop = asyncio.get_running_loop()
        idle_polls = 0
        while idle_polls < 2 and not self.force_exit:
            if deadline is not None and loop.time() >= deadline:
                return
            idle_polls = 0 if self._busy() else idle_polls + 1
            await asyncio.sleep(DRAIN_POLL_S)


def build_server(app: Any, settings: ServeSettings | None = None, **config: Any) -> ModelServer:
    """The server :func:`run_server` runs; ``config`` overrides ``uvicorn.Config`` options
    (tests start it in a thread and stop it with ``server.should_exit = True``)."""
    settings = settings or ServeSettings()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        **config,
    }
    return ModelServer(uvicorn.Config(app, **options))


def run_server(app: Any, settings: ServeSettings | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully; blocks."""
    build_server(app, settings).run()
