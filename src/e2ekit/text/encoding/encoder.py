"""Sentence vectors from a pretrained encoder folder, fast: ``Encoder("minilm").encode(texts)``.

The folder is exported once to an optimised ONNX graph (int8 on request) that onnxruntime
runs on the CPU; eager PyTorch is the fallback and the CUDA path when onnxruntime has no CUDA
provider. Inputs are tokenized once, sorted by length and padded per batch, so a batch of
short sentences costs what short sentences cost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.text.encoding.batching import WordPieces, check_inputs, length_batches
from e2ekit.text.encoding.errors import EncoderOptionError
from e2ekit.text.encoding.pooling import (
    POOLINGS,
    folder_max_length,
    folder_normalize,
    folder_pooling,
    pooled_dim,
)

__all__ = ["BACKENDS", "DEVICES", "PRECISIONS", "Encoder", "plan_runtime"]

BACKENDS = ("auto", "onnxruntime", "torch")
PRECISIONS = ("fp32", "int8")
DEVICES = ("auto", "cpu", "cuda")
MAX_LENGTH_CAP = 512


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise EncoderOptionError(f"{name} {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderOptionError(f"{name} must be a positive int, got {value!r}")
    return value


def plan_runtime(backend: str, precision: str, device: str) -> tuple[str, str]:
    """The ``(backend, device)`` that will run, ``auto`` resolved for this machine.

    int8 is onnxruntime's dynamic-quantised CPU kernels, so it is refused elsewhere rather
    than silently run as fp32. An explicit ``cuda`` never falls back to the CPU.
    """
    from e2ekit.core.infer import onnxruntime_has_cuda, torch_has_cuda

    backend = _choice("backend", backend, BACKENDS)
    precision = _choice("precision", precision, PRECISIONS)
    device = _choice("device", device, DEVICES)
    if precision == "int8":
        if backend == "torch":
            raise EncoderOptionError(
                "precision int8 runs on onnxruntime's int8 CPU kernels; the torch backend "
                "has none: use backend='onnxruntime' (or 'auto'), or precision='fp32'"
            )
        if device == "cuda":
            raise EncoderOptionError(
                "precision int8 runs on the CPU only (onnxruntime's CUDA provider has no "
                "kernels for the dynamic int8 operators): use device='cpu', or precision='fp32'"
            )
        return "onnxruntime", "cpu"
    cuda = device != "cpu" and torch_has_cuda()
    if device == "cuda" and not cuda:
        raise EncoderOptionError("device cuda: this machine has no usable CUDA device")
    if not cuda:
        return ("onnxruntime" if backend == "auto" else backend), "cpu"
    ort_cuda = onnxruntime_has_cuda()
    if backend == "auto":
        return ("onnxruntime" if ort_cuda else "torch"), "cuda"
    if backend == "onnxruntime" and not ort_cuda:
        if device == "cuda":
            raise EncoderOptionError(
                "device cuda: onnxruntime has no CUDAExecutionProvider (pip install "
                "onnxruntime-gpu); use backend='torch' or 'auto' for CUDA, or device='cpu'"
            )
        return "onnxruntime", "cpu"
    return backend, "cuda"


class Encoder:
    """Encode sentences into fixed-size float32 vectors with a pretrained encoder.

    ``model``: a local Hugging Face encoder folder (a sentence-transformers folder included)
    or the alias ``minilm``. ``pooling`` (cls, mean, max, mean_max) and ``normalize`` default
    to what the folder's sentence-transformers files declare (else mean, no normalising);
    ``layer`` picks the hidden layer (-1 last, -2 the one before, 0 the embeddings).
    ``max_length`` defaults to the folder's ``max_seq_length``, else the model's limit (at
    most 512); longer inputs are truncated and counted in :attr:`last_truncated`.
    ``threads``: onnxruntime intra-op threads (torch: ``torch.set_num_threads``, process-wide).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        backend: str = "auto",
        precision: str = "fp32",
        pooling: str | None = None,
        layer: int = -1,
        normalize: bool | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        device: str = "auto",
    ) -> None:
        from e2ekit.text.encoding.export import ExportedModel, exported_model
        from e2ekit.text.encoding.hidden import layer_index
        from e2ekit.text.encoding.runners import OrtRunner, TorchRunner
        from e2ekit.text.models.pretrained import (
            load_encoder_config,
            load_tokenizer,
            resolve_model_dir,
        )

        if pooling is not None:
            _choice("pooling", pooling, POOLINGS)
        self.batch_size = _positive("batch_size", batch_size)
        self.threads = None if threads is None else _positive("threads", threads)
        self.precision = precision
        self.backend, self.device = plan_runtime(backend, precision, device)
        self.model_dir: Path = resolve_model_dir(str(model), "model", weights=True)
        config = load_encoder_config(self.model_dir)
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        self.layer = layer
        index = layer_index(layer, self.num_layers)
        self.pooling: str = pooling or folder_pooling(self.model_dir)
        self.normalize = folder_normalize(self.model_dir) if normalize is None else bool(normalize)
        tokenizer = load_tokenizer(self.model_dir)
        self.max_length = self._max_length(max_length, config, tokenizer)

        self.export: ExportedModel | None = None
        self._runner: Any
        if self.backend == "onnxruntime":
            self.export = exported_model(self.model_dir, index, precision, tokenizer)
            self._runner = OrtRunner(
                self.export.model_path, threads=self.threads, device=self.device
            )
        else:
            self._runner = TorchRunner(
                self.model_dir, layer, threads=self.threads, device=self.device
            )
        # after the export: the sample parity run calls the tokenizer with padding
        self._pieces = WordPieces(tokenizer, self.max_length)
        self.last_truncated = 0
        self.last_truncated_inputs: list[int] = []

    def _max_length(self, value: int | None, config: Any, tokenizer: Any) -> int:
        limits = [MAX_LENGTH_CAP]
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:  # unset: a huge sentinel
            limits.append(tok_max)
        limit = min(limits)
        if value is None:
            return min(folder_max_length(self.model_dir) or limit, limit)
        value = _positive("max_length", value)
        if not 2 < value <= limit:
            raise EncoderOptionError(
                f"max_length {value} is out of range for {self.model_dir.name}: 3 ... {limit}"
            )
        return value

    # -- properties --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of each vector (twice the hidden size for ``mean_max``)."""
        return pooled_dim(self.hidden_size, self.pooling)

    @property
    def report(self) -> dict[str, Any] | None:
        """The export's report (parity, int8 cosine, timings); None on the torch backend."""
        return None if self.export is None else self.export.report

    @property
    def exported(self) -> bool:
        """Whether this Encoder built its export (False: it reused the cached one)."""
        return self.export is not None and self.export.built

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs the model, for logs, summaries and health checks."""
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "provider": None if self._runner is None else self._runner.provider,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "layer": self.layer,
            "max_length": self.max_length,
            "dim": self.dim,
        }

    # -- encoding ----------------------------------------------------------------------------
    def tokenize(
        self, texts: str | list[str] | list[list[str]], *, is_tokenized: bool = False
    ) -> list[list[str]]:
        """The tokens the model sees for each input: special tokens included, truncated."""
        items = check_inputs(texts, is_tokenized=is_tokenized)
        return self._pieces(items, is_tokenized=is_tokenized).tokens

    def encode(
        self,
        texts: str | list[str] | list[list[str]],
        *,
        batch_size: int | None = None,
        is_tokenized: bool = False,
    ) -> np.ndarray:
        """(N, dim) float32 vectors in input order; a single string gives (1, dim).

        ``is_tokenized``: each input is a list of words, already split (each word is still
        cut into the model's sub-word pieces). Sets :attr:`last_truncated` to the number of
        inputs cut at ``max_length`` and :attr:`last_truncated_inputs` to their positions (the
        latest call's when threads share the Encoder).
        """
        runner = self._runner
        if runner is None:
            raise RuntimeError("this Encoder is closed")
        size = self.batch_size if batch_size is None else _positive("batch_size", batch_size)
        items = check_inputs(texts, is_tokenized=is_tokenized)
        tok = self._pieces(items, is_tokenized=is_tokenized)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for batch in length_batches(tok, size, self._pieces.pad_id, runner.input_names):
            out[batch.index] = runner.run(batch.feeds, self.pooling)
        if self.normalize and len(out):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.last_truncated = tok.truncated
        self.last_truncated_inputs = list(tok.cut)
        return out

    def close(self) -> None:
        """Release the session or module (idempotent); encode() afterwards is an error."""
        if self._runner is not None:
            self._runner.close()
        self._runner = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Encoder({str(self.model_dir)!r}, backend={self.backend!r}, device={self.device!r}, "
            f"precision={self.precision!r}, pooling={self.pooling!r}, layer={self.layer}, "
            f"dim={self.dim})"
        )
