"""A small synchronous client for e2ekit model servers; kits wrap it with typed helpers."""

from __future__ import annotations

from typing import Any

import httpx


class ServeError(RuntimeError):
    """The server answered with an error status; ``detail`` is its message."""

    def __init__(self, status_code: int, detail: str, url: str) -> None:
        super().__init__(f"{status_code} from {url}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.url = url


class ServeClient:
    """``ServeClient("http://127.0.0.1:8000").predict({...})``; reuses one connection pool.

    Thread-safe (httpx.Client is); use as a context manager or call :meth:`close`.
    """

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def predict(self, payload: Any, path: str = "/predict") -> Any:
        """POST ``payload`` as JSON to ``path``; returns the decoded JSON answer."""
        return self._check(self._http.post(path, json=payload)).json()

    def health(self) -> dict[str, Any]:
        """``GET /health``; raises :class:`ServeError` (503) while the server shuts down."""
        return self._check(self._http.get("/health")).json()

    def metrics_text(self) -> str:
        """``GET /metrics`` in Prometheus text format."""
        return self._check(self._http.get("/metrics")).text

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        raise ServeError(response.status_code, str(detail), str(response.request.url))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
