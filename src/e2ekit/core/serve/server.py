"""Running an app under uvicorn with e2ekit's shutdown behaviour."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from e2ekit.core.serve.settings import ServeSettings


class ModelServer(uvicorn.Server):
    """A ``uvicorn.Server`` that turns the app to 503 the moment shutdown starts.

    uvicorn runs the app's lifespan shutdown only after in-flight requests finished; flipping
    earlier makes ``/health`` fail at once (load balancers stop routing here) while those
    requests, and the batches they wait on, still complete.
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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"serving on {self.url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.runtime is not None:
            self.runtime.begin_shutdown()
        await super().shutdown(sockets=sockets)


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
