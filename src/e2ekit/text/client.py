"""Clients of ``e2ekit text serve``: :class:`Client` (blocking) and :class:`AsyncClient`.

``Client("http://127.0.0.1:8000").encode(["a sentence"])`` gives the same (N, dim) float32
array as ``Encoder.encode``. Long lists are sent in several requests that stay under the
server's limits; connection errors and busy answers (503, 429) are retried with
exponential backoff, honouring ``Retry-After``. Server errors raise
:class:`~e2ekit.core.serve.ServeError` with the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np

from e2ekit.core.serve.client import ServeClient, ServeError

__all__ = ["AsyncClient", "Client", "ServeError"]

API_KEY_ENV = "E2EKIT_API_KEY"
RETRY_STATUSES = frozenset({429, 503})
#: Failures before the server answered anything: sending again cannot run a request twice
#: in a way that matters (encoding has no side effects).
RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# Under the server's defaults (256 texts, 400 000 characters, 2 MB body): a chunk of
# 200 000 characters stays under 2 MB even when every character is a 6-byte JSON escape.
BATCH_TEXTS = 256
BATCH_CHARS = 200_000
PARALLEL_REQUESTS = 4  # AsyncClient.encode: parts in flight at once, so a long list never
# floods the server's queue (it would answer 503 to everyone)


def checked_texts(texts: list[Any]) -> list[Any]:
    """``texts`` (strings, or word lists) as sent, refused here when one could not be: not a
    string, or not encodable as UTF-8 (a lone surrogate), naming its index."""
    for i, text in enumerate(texts):
        for word in text if isinstance(text, list) else [text]:
            if not isinstance(word, str):
                raise TypeError(f"texts[{i}] is {type(word).__name__}, not a string")
            try:
                word.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"texts[{i}] holds a lone surrogate: not valid Unicode") from None
    return texts


def chunks(texts: Sequence[Any], max_texts: int, max_chars: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most ``max_texts`` texts and about ``max_chars`` characters."""
    part: list[Any] = []
    size = 0
    for text in texts:
        n = len(text) if isinstance(text, str) else sum(map(len, text)) + len(text)
        if part and (len(part) >= max_texts or size + n > max_chars):
            yield part
            part, size = [], 0
        part.append(text)
        size += n
    if part:
        yield part


def retry_after(response: httpx.Response | None) -> float | None:
    """Seconds the server asked to wait (``Retry-After`` as seconds or an HTTP date)."""
    value = None if response is None else response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _Base:
    """What both clients share: settings, payloads and decoding; no I/O."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        batch_size: int = BATCH_TEXTS,
    ) -> None:
        if retries < 0 or backoff_s < 0 or max_wait_s < 0 or batch_size < 1:
            raise ValueError("need retries >= 0, backoff_s >= 0, max_wait_s >= 0, batch_size >= 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.batch_size = batch_size
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        #: Inputs the server cut at the model's length limit in the last :meth:`encode`.
        self.last_truncated = 0
        self._http = self._open()

    def _open(self) -> Any:
        """The HTTP connection pool (sync or async: each client's own)."""
        raise NotImplementedError

    def _wait(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds before try ``attempt + 1``, or None when it should not be retried."""
        if attempt >= self.retries:
            return None
        asked = retry_after(response)
        wait = asked if asked is not None else self.backoff_s * 2**attempt
        return min(wait, self.max_wait_s)

    @staticmethod
    def _texts(texts: str | Sequence[Any], is_tokenized: bool) -> list[Any]:
        if isinstance(texts, str):
            if is_tokenized:
                raise TypeError("with is_tokenized, pass a list of word lists")
            return checked_texts([texts])
        return checked_texts([list(t) if is_tokenized else t for t in texts])

    def _encode_payloads(self, texts: list[Any], is_tokenized: bool) -> Iterator[dict[str, Any]]:
        for part in chunks(texts, self.batch_size, BATCH_CHARS):
            yield {"texts": part, "is_tokenized": is_tokenized}

    @staticmethod
    def _vectors(answers: list[dict[str, Any]]) -> np.ndarray:
        rows = [np.asarray(a["vectors"], dtype=np.float32) for a in answers]
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    @staticmethod
    def _embedding_payload(
        texts: str | Sequence[str],
        model: str | None,
        dimensions: int | None,
        encoding_format: str,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input": texts if isinstance(texts, str) else checked_texts(list(texts)),
            "encoding_format": encoding_format,
        }
        if model is not None:
            body["model"] = model
        if dimensions is not None:
            body["dimensions"] = dimensions
        return body


class Client(_Base):
    """Blocking client; thread-safe (one connection pool), a context manager.

    ``api_key``: sent as ``Authorization: Bearer``; default ``$E2EKIT_API_KEY``.
    ``retries``: extra tries after a connection error, 503 or 429 (``backoff_s`` doubling,
    or the server's ``Retry-After``, each wait at most ``max_wait_s``). ``batch_size``:
    most texts per request when :meth:`encode` splits a long list.
    """

    def _open(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def _send(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=payload)
            except RETRY_ERRORS:
                wait = self._wait(attempt, None)
                if wait is None:
                    raise
            else:
                wait = self._wait(attempt, response)
                if response.status_code not in RETRY_STATUSES or wait is None:
                    return ServeClient._check(response)
            time.sleep(wait)
            attempt += 1

    def encode(self, texts: str | Sequence[Any], *, is_tokenized: bool = False) -> np.ndarray:
        """(N, dim) float32 vectors from ``POST /encode``, in input order."""
        answers = [
            self._send("POST", "/encode", p).json()
            for p in self._encode_payloads(self._texts(texts, is_tokenized), is_tokenized)
        ]
        self.last_truncated = sum(a["truncated"] for a in answers)
        return self._vectors(answers)

    def embeddings(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        encoding_format: str = "float",
    ) -> dict[str, Any]:
        """The ``POST /v1/embeddings`` answer as sent (OpenAI's shape), in one request."""
        body = self._embedding_payload(texts, model, dimensions, encoding_format)
        return dict(self._send("POST", "/v1/embeddings", body).json())

    def predict(self, payload: Any, path: str = "/predict") -> Any:
        """POST ``payload`` to a fine-tuned export's ``/predict``; its JSON answer."""
        return self._send("POST", path, payload).json()

    def health(self) -> dict[str, Any]:
        return dict(self._send("GET", "/health").json())

    def metrics_text(self) -> str:
        return self._send("GET", "/metrics").text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls as :class:`Client`, awaited, over one ``httpx.AsyncClient``; use
    ``async with`` or :meth:`aclose`. Concurrent calls share the connection pool."""

    def _open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    async def _send(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, json=payload)
            except RETRY_ERRORS:
                wait = self._wait(attempt, None)
                if wait is None:
                    raise
            else:
                wait = self._wait(attempt, response)
                if response.status_code not in RETRY_STATUSES or wait is None:
                    return ServeClient._check(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def encode(self, texts: str | Sequence[Any], *, is_tokenized: bool = False) -> np.ndarray:
        """(N, dim) float32 vectors from ``POST /encode``; the parts are sent concurrently."""
        payloads = self._encode_payloads(self._texts(texts, is_tokenized), is_tokenized)
        gate = asyncio.Semaphore(PARALLEL_REQUESTS)

        async def send(payload: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                return dict((await self._send("POST", "/encode", payload)).json())

        answers = await asyncio.gather(*(send(p) for p in payloads))
        self.last_truncated = sum(a["truncated"] for a in answers)
        return self._vectors(answers)

    async def embeddings(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        encoding_format: str = "float",
    ) -> dict[str, Any]:
        body = self._embedding_payload(texts, model, dimensions, encoding_format)
        return dict((await self._send("POST", "/v1/embeddings", body)).json())

    async def predict(self, payload: Any, path: str = "/predict") -> Any:
        return (await self._send("POST", path, payload)).json()

    async def health(self) -> dict[str, Any]:
        return dict((await self._send("GET", "/health")).json())

    async def metrics_text(self) -> str:
        return (await self._send("GET", "/metrics")).text

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
