"""Sentence vectors over HTTP: ``POST /encode`` (bert-as-service style) and ``POST
/v1/embeddings`` (OpenAI-compatible) on the core server, plus an optional API key.

A pretrained encoder folder (or ``minilm``) is served by an :class:`~e2ekit.text.Encoder`
(or, with ``serve.workers``, an EncoderPool of encoder processes); a fine-tuned export keeps
``/predict`` and gains the vector routes only when an Encoder can load the folder. Requests
from many clients are packed into one model call by the core batcher; each request still
gets its own truncation count and token usage.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from argparse import ArgumentParser, Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.serve import BadRequest, Endpoint
from e2ekit.core.serve.settings import ServeSettings

log = logging.getLogger("e2ekit.serve")

API_KEY_ENV = "E2EKIT_API_KEY"
#: Routes answered without the API key: load balancers probe health without credentials.
MAX_TEXT_CHARS = 20_000  # one text (or one pre-split word list, separators counted)
MAX_REQUEST_CHARS = 400_000  # all texts of one request together
#: A lone UTF-16 surrogate (JSON allows the escape "\ud800"): no tokenizer takes it.
SURROGATE = re.compile("[\ud800-\udfff]")


# -- request schemas ----------------------------------------------------------------------------
class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    texts: list[str | list[str]] = Field(
        description="raw texts, or with is_tokenized lists of words (already split)"
    )
    is_tokenized: bool = Field(False, description="each text is a list of words")
    show_tokens: bool = Field(False, description="also return the tokens the model saw")


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="one text or a list of texts")
    model: str | None = Field(None, description="echoed for compatibility; the served model runs")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: the float32 little-endian bytes of each vector"
    )
    dimensions: int | None = Field(
        None, description="keep the first n components (re-normalised when the model normalises)"
    )
    user: str | None = Field(None, description="accepted for compatibility; unused")


# -- batch items and results ------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One input of a request: a text, or a list of words when ``is_tokenized``."""

    value: str | list[str]
    is_tokenized: bool


@dataclass(frozen=True)
class Encoded:
    """One input's vector, the tokens the model saw and whether they were cut short."""

    vector: np.ndarray
    tokens: list[str]
    truncated: bool


def check_items(texts: Sequence[Any], is_tokenized: bool, field: str) -> list[Item]:
    """The request's inputs as batch items; a wrong, empty or over-long one is a 4xx
    naming it, so one bad text never reaches (or fails) a batch shared with others."""
    if not texts:
        raise BadRequest(f"'{field}' must be a non-empty list", 422)
    items = []
    total = 0
    for i, text in enumerate(texts):
        if is_tokenized:
            if isinstance(text, str):
                raise BadRequest(
                    f"{field}[{i}] is a string; with is_tokenized each input is a list of words",
                    422,
                )
            if not text or not any(w.strip() for w in text):
                raise BadRequest(f"{field}[{i}] has no words", 422)
            if any(SURROGATE.search(w) for w in text):
                raise BadRequest(f"{field}[{i}] holds a lone surrogate: not valid Unicode", 422)
            size = sum(map(len, text)) + len(text) - 1
        else:
            if not isinstance(text, str):
                raise BadRequest(
                    f"{field}[{i}] is a list; send strings, or set is_tokenized for word lists",
                    422,
                )
            if not text.strip():
                raise BadRequest(f"{field}[{i}] is empty", 422)
            if SURROGATE.search(text):
                raise BadRequest(f"{field}[{i}] holds a lone surrogate: not valid Unicode", 422)
            size = len(text)
        if size > MAX_TEXT_CHARS:
            raise BadRequest(
                f"{field}[{i}] has {size} characters; at most {MAX_TEXT_CHARS} per text", 413
            )
        total += size
        items.append(Item(list(text) if is_tokenized else text, is_tokenized))
    if total > MAX_REQUEST_CHARS:
        raise BadRequest(
            f"request has {total} characters in all; at most {MAX_REQUEST_CHARS} per request",
            413,
        )
    return items


# -- the model side -------------------------------------------------------------------------------
class EncoderService:
    """Runs batches of :class:`Item` through an Encoder-like object.

    The encoder needs ``encode(texts, is_tokenized=...)``, ``tokenize(texts,
    is_tokenized=...)``, ``dim`` and ``last_truncated`` (inputs cut in the last encode);
    ``max_length`` and ``normalize`` are used when present. The Encoder reports truncation
    per call, while a batch mixes several requests: the inputs cut are the ones whose token
    count reached ``max_length``, and only when that is ambiguous (an input that fits
    exactly) are those few encoded alone to tell.
    """

    def __init__(self, encoder: Any, name: str) -> None:
        self.encoder = encoder
        self.name = name
        self.dim = int(encoder.dim)
        self.normalize = bool(getattr(encoder, "normalize", False))
        self._lock = threading.Lock()  # last_truncated belongs to the call that set it

    def run_batch(self, items: list[Item]) -> list[Encoded]:
        out: list[Encoded | None] = [None] * len(items)
        for flag in (False, True):
            index = [i for i, it in enumerate(items) if it.is_tokenized is flag]
            if not index:
                continue
            values = [items[i].value for i in index]
            vectors, tokens, cut = self._encode(values, flag)
            for j, i in enumerate(index):
                out[i] = Encoded(vectors[j], tokens[j], cut[j])
        return out  # type: ignore[return-value]

    def _encode(
        self, values: list[Any], is_tokenized: bool
    ) -> tuple[np.ndarray, list[list[str]], list[bool]]:
        enc = self.encoder
        with self._lock:
            tokens = enc.tokenize(values, is_tokenized=is_tokenized)
            vectors = np.asarray(enc.encode(values, is_tokenized=is_tokenized), dtype=np.float32)
            count = int(enc.last_truncated)
            cut = [False] * len(values)
            if count:
                limit = getattr(enc, "max_length", None)
                maybe = [i for i, t in enumerate(tokens) if limit is None or len(t) >= int(limit)]
                if len(maybe) == count:
                    for i in maybe:
                        cut[i] = True
                else:  # some input fits exactly: ask the encoder about each candidate
                    for i in maybe:
                        enc.encode([values[i]], is_tokenized=is_tokenized)
                        cut[i] = bool(enc.last_truncated)
        return vectors, tokens, cut

    def shortened(self, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
        """The first ``dimensions`` components, re-normalised like the full vectors were."""
        if dimensions is None or dimensions == self.dim:
            return vectors
        short = vectors[:, :dimensions]
        if self.normalize:
            short = short / np.maximum(np.linalg.norm(short, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(short, dtype=np.float32)

    # -- endpoints ------------------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(
                "/encode",
                EncodeRequest,
                self._encode_items,
                self.run_batch,
                self._encode_response,
                summary="sentence vectors (bert-as-service style)",
            ),
            Endpoint(
                "/v1/embeddings",
                EmbeddingsRequest,
                self._embedding_items,
                self.run_batch,
                self._embedding_response,
                summary="sentence vectors (OpenAI embeddings API)",
            ),
        ]

    @staticmethod
    def _encode_items(req: EncodeRequest) -> list[Item]:
        return check_items(req.texts, req.is_tokenized, "texts")

    def _encode_response(self, req: EncodeRequest, results: list[Encoded]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "vectors": np.stack([r.vector for r in results]),
            "dim": self.dim,
            "truncated": sum(r.truncated for r in results),
        }
        if req.show_tokens:
            body["tokens"] = [r.tokens for r in results]
        return body

    def _embedding_items(self, req: EmbeddingsRequest) -> list[Item]:
        if req.dimensions is not None and not 1 <= req.dimensions <= self.dim:
            raise BadRequest(
                f"dimensions={req.dimensions} is not supported: this model gives "
                f"{self.dim}-dimensional vectors (use 1 ... {self.dim})",
                422,
            )
        texts = [req.input] if isinstance(req.input, str) else req.input
        return check_items(texts, False, "input")

    def _embedding_response(self, req: EmbeddingsRequest, results: list[Encoded]) -> dict[str, Any]:
        vectors = self.shortened(np.stack([r.vector for r in results]), req.dimensions)
        data: list[dict[str, Any]] = []
        for i, vec in enumerate(vectors):
            if req.encoding_format == "base64":
                value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
            else:
                value = vec
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(r.tokens) for r in results)
        return {
            "object": "list",
            "data": data,
            "model": self.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


# -- API key ---------------------------------------------------------------------------------
def resolve_api_key(settings: ServeSettings) -> str | None:
    """``serve.api_key`` when set, else ``$E2EKIT_API_KEY``; None (or empty): no key needed."""
    key = getattr(settings, "api_key", None) or os.environ.get(API_KEY_ENV, "")
    return key or None


def build_app(
    endpoints: Sequence[Endpoint],
    settings: ServeSettings,
    *,
    model_info: dict[str, Any],
    api_key: str | None = None,
) -> Any:
    """The core app over ``endpoints``, behind ``api_key`` when one is given."""
    from e2ekit.core.serve import create_app

    return create_app(endpoints, settings, model_info=model_info, api_key=api_key)


def encoder_app(
    encoder: Any,
    settings: ServeSettings | None = None,
    *,
    name: str = "encoder",
    api_key: str | None = None,
    model_info: dict[str, Any] | None = None,
) -> Any:
    """An app serving ``/encode`` and ``/v1/embeddings`` for ``encoder`` (tests, embedding)."""
    service = EncoderService(encoder, name)
    info = {"kit": "text", "model": name, **(model_info or {})}
    return build_app(
        service.endpoints(), settings or ServeSettings(), model_info=info, api_key=api_key
    )


# -- `e2ekit text serve` ---------------------------------------------------------------------
def is_export(model: str | os.PathLike[str]) -> bool:
    """A fine-tuned export (it has ``deploy.yaml``) rather than a pretrained encoder folder."""
    from e2ekit.core.infer import DEPLOY_FILE

    return (Path(model) / DEPLOY_FILE).is_file()


def load_encoder(model: str | os.PathLike[str], infer: Any, workers: int = 0) -> Any:
    """An Encoder for ``model`` on the ``infer`` settings (--backend, --precision, ...).

    ``workers`` (``serve.workers``): N > 0 is an :class:`EncoderPool` of N processes; 0 is a
    pool with one process per CUDA device when the settings run on several, else the one
    in-process Encoder (a single device gains nothing from a process hop)."""
    from e2ekit.text import Encoder
    from e2ekit.text.encoding.pool import EncoderPool, cuda_device_count

    options = {
        "backend": infer.backend,
        "precision": infer.precision,
        "threads": infer.num_threads,
        "device": infer.device,
    }
    if workers > 0:
        return EncoderPool(model, workers=workers, **options)
    if cuda_device_count(infer.backend, infer.precision, infer.device) > 1:
        return EncoderPool(model, **options)
    return Encoder(model, **options)


def export_encoder(model: str | os.PathLike[str], infer: Any, workers: int = 0) -> Any | None:
    """An Encoder for an export folder, or None when it cannot load one: a text export holds
    the ONNX graph and tokenizer but not the Hugging Face config and weights it needs."""
    try:
        return load_encoder(model, infer, workers)
    except ConfigError as exc:
        log.info("serve: no /encode or /v1/embeddings for this export: %s", exc)
        return None


def add_serve_flags(p: ArgumentParser) -> None:
    """The text serve verb's flags beyond the shared ones: ``--workers``."""
    p.add_argument(
        "--workers",
        type=int,
        help="encoder processes (serve.workers): 0 = one per CUDA device when there are "
        "several, else the in-process encoder; N = N processes sharing the CPU threads",
    )


def serve_workers(settings: ServeSettings, args: Namespace) -> int:
    """``--workers`` when given, else ``serve.workers`` (0 where the section lacks it)."""
    flag = getattr(args, "workers", None)
    if flag is None:
        return int(getattr(settings, "workers", 0))
    if flag < 0:
        raise ConfigError(f"--workers {flag}: must be 0 (automatic) or a number of processes")
    return int(flag)


def served_name(model: str) -> str:
    """The name ``/v1/embeddings`` answers with: the alias, else the folder's name."""
    from e2ekit.text.models.pretrained import ALIASES

    return model if model in ALIASES else Path(model).resolve().name


def cmd_serve(kit: Any, args: Namespace) -> dict[str, Any]:
    """``e2ekit text serve --model DIR``: an export (``/predict``, plus the vector routes when
    an Encoder can load it) or a pretrained encoder folder / ``minilm`` (vector routes)."""
    from e2ekit.core.serve import run_server
    from e2ekit.core.verbs import export_predictor, load_export_config, runtime_info

    if not args.model:
        raise E2EError(
            "--model is required: an export folder (from `export`), a pretrained encoder "
            "folder, or minilm"
        )
    config = load_export_config(kit, args, sections=("infer", "serve"))
    workers = serve_workers(config.serve, args)
    name = served_name(args.model)
    endpoints: list[Endpoint] = []
    info: dict[str, Any] = {"kit": kit.name}
    if is_export(args.model):
        predictor = export_predictor(kit, args.model, config.infer, args, "serve", config)
        endpoints += kit.endpoints(predictor)
        info.update(model=str(Path(args.model).resolve()), **runtime_info(predictor))
        encoder = export_encoder(args.model, config.infer, workers)
        if encoder is not None:
            info["encoder"] = encoder.runtime
    else:
        encoder = load_encoder(args.model, config.infer, workers)
        info.update(model=str(encoder.model_dir), name=name, **encoder.runtime)
    if encoder is not None:
        endpoints += EncoderService(encoder, name).endpoints()
    info["endpoints"] = [ep.path for ep in endpoints]
    key = resolve_api_key(config.serve)
    app = build_app(endpoints, config.serve, model_info=info, api_key=key)
    try:
        run_server(app, config.serve)
    finally:
        if encoder is not None:
            encoder.close()
    return {"served": info["model"], "endpoints": info["endpoints"], "api_key": bool(key)}
