"""Bearer-key access control for the model servers (``create_app(api_key=...)``)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

OPEN_PATHS = frozenset({"/health"})  # probes need no key


class ApiKeyMiddleware:
    """Answers 401 to HTTP requests without ``Authorization: Bearer <key>`` (``/health`` is
    open), before the body is read, so an unauthorised client cannot make the server buffer
    or parse anything."""

    def __init__(
        self,
        app: Any,
        key: str,
        open_paths: frozenset[str] = OPEN_PATHS,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = open_paths
        self.on_reject = on_reject

    def _allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or self._allowed(scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        if self.on_reject is not None:
            self.on_reject(scope["path"])
        response = JSONResponse(
            {"detail": "missing or wrong API key: send the header 'Authorization: Bearer <key>'"},
            status_code=401,
            # the unread body must not be parsed as the next request
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )
        await response(scope, receive, send)
