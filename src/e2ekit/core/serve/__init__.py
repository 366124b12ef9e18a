"""Generic model server: dynamic batching, limits, health, metrics, graceful shutdown.

Names load lazily so that ``e2ekit.core.serve.settings`` (part of the config schema)
does not pull in FastAPI and uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2ekit.core.serve.app import BadRequest, Endpoint, ServeRuntime, create_app
    from e2ekit.core.serve.batcher import (
        BatcherClosedError,
        BatchFailedError,
        DynamicBatcher,
        QueueFullError,
    )
    from e2ekit.core.serve.client import ServeClient, ServeError
    from e2ekit.core.serve.metrics import ServeMetrics
    from e2ekit.core.serve.server import ModelServer, build_server, run_server
    from e2ekit.core.serve.settings import ServeSettings

_EXPORTS = {
    "BadRequest": "app",
    "Endpoint": "app",
    "ServeRuntime": "app",
    "create_app": "app",
    "BatchFailedError": "batcher",
    "BatcherClosedError": "batcher",
    "DynamicBatcher": "batcher",
    "QueueFullError": "batcher",
    "ServeClient": "client",
    "ServeError": "client",
    "ServeMetrics": "metrics",
    "ModelServer": "server",
    "build_server": "server",
    "run_server": "server",
    "ServeSettings": "settings",
}

__all__ = [
    "BadRequest",
    "BatchFailedError",
    "BatcherClosedError",
    "DynamicBatcher",
    "Endpoint",
    "ModelServer",
    "QueueFullError",
    "ServeClient",
    "ServeError",
    "ServeMetrics",
    "ServeRuntime",
    "ServeSettings",
    "build_server",
    "create_app",
    "run_server",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
