"""A model folder -> a cached, optimised (and optionally int8) ONNX graph of its hidden states.

The graph is built once per distinct weights, layer and precision and shared through the data
cache (:func:`e2ekit.core.cache.cached_folder`); ``report.json`` beside it records what was
measured before it was published: ONNX vs PyTorch parity, int8 cosine to fp32, timings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.cache import cached_folder
from e2ekit.core.export.errors import ExportError
from e2ekit.core.paths import data_cache_dir
from e2ekit.text.encoding.pooling import pool_numpy

__all__ = ["SAMPLE_TEXTS", "ExportedModel", "exported_model", "weights_digest"]

FORMAT = 2
OPSET = 17
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
PARITY_ATOL = 1e-3  # hidden states; pooled, normalised vectors agree far more closely
# Matrix multiplies (and the fused attention's projections) only: int8 embeddings
# (QEmbedLayerNormalization) cost accuracy on short inputs and save no time.
INT8_OP_TYPES = ("MatMul", "Attention")
SAMPLE_MAX_LENGTH = 128
# The fixed sample that parity and int8 cosine are measured on: varied lengths and topics.
SAMPLE_TEXTS = (
    "A man is playing a guitar.",
    "The quarterly report shows revenue grew by eight percent, driven by strong demand.",
    "Where is the nearest train station?",
    "Heavy rain is expected across the region tonight, with local flooding possible.",
    "She adopted a small grey cat from the animal shelter last spring.",
    "Neural networks learn representations from large amounts of labelled data.",
    "Please close the window before you leave the office.",
    "The committee postponed its decision until more evidence about the long-term "
    "environmental effects of the new bridge had been collected and reviewed.",
    "Two children are building a sandcastle on the beach.",
    "How many calories are in a cup of cooked rice?",
    "Thanks!",
    "The museum reopened after a two-year renovation of its east wing.",
)


@dataclass(frozen=True)
class ExportedModel:
    """A published export: the ONNX file, its report, and whether this call built it."""

    folder: Path
    model_path: Path
    report: dict[str, Any]
    built: bool


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of one file (memoised per size and mtime: an edited file is hashed again)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(folder: Path) -> dict[str, str]:
    """Hashes of what decides the graph: config.json and the weight files."""
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file()
        and (p.name == "config.json" or p.suffix in (".safetensors", ".bin") or "index" in p.name)
    )
    out = {}
    for name in names:
        st = (folder / name).stat()
        out[name] = _file_digest(str(folder / name), st.st_size, st.st_mtime_ns)
    return out


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def exported_model(folder: Path, layer: int, precision: str, tokenizer: Any) -> ExportedModel:
    """The cached export of ``folder``'s hidden states after layer index ``layer``.

    ``tokenizer`` (the folder's) turns :data:`SAMPLE_TEXTS` into the parity inputs. int8 is
    built from the optimised fp32 graph, so asking for it publishes the fp32 export too.
    """
    params = {
        "format": FORMAT,
        "opset": OPSET,
        "layer": layer,
        "precision": precision,
        "weights": weights_digest(folder),
        "versions": _versions(),
    }
    built: list[bool] = []

    def build(out: Path) -> None:
        built.append(True)
        if precision == "int8":
            fp32 = exported_model(folder, layer, "fp32", tokenizer)
            _build_int8(out, fp32, tokenizer)
        else:
            _build_fp32(out, folder, layer, tokenizer)

    root = data_cache_dir() / "text" / "encoders"
    # "<parent>_<folder>": a package's generic "model" folder still says which model it is
    name = "_".join(folder.resolve().parts[-2:])
    path = cached_folder(root, name, params, build, marker=REPORT_FILE)
    report = json.loads((path / REPORT_FILE).read_text(encoding="utf-8"))
    return ExportedModel(path, path / MODEL_FILE, report, bool(built))


def sample_feeds(tokenizer: Any, input_names: list[str], n: int | None = None) -> dict:
    """The first ``n`` sample texts as padded int64 feeds."""
    texts = list(SAMPLE_TEXTS[:n])
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=SAMPLE_MAX_LENGTH, return_tensors="np"
    )
    return {name: np.asarray(enc[name], dtype=np.int64) for name in input_names}


def _build_fp32(out: Path, folder: Path, layer: int, tokenizer: Any) -> None:
    import torch

    from e2ekit.text.encoding.hidden import load_hidden_states
    from e2ekit.text.encoding.runners import ort_session

    module = load_hidden_states(folder, layer, attn_implementation="eager")
    names = module.input_names
    cases = [sample_feeds(tokenizer, names, 2), sample_feeds(tokenizer, names)]
    raw = out / "raw.onnx"
    export_seconds = _trace(module, cases[0], raw)
    optimize_seconds, fused, optimizer_error = _optimize(raw, out / MODEL_FILE, module)
    raw.unlink()

    session = ort_session(out / MODEL_FILE)
    worst = 0.0
    with torch.inference_mode():
        for feeds in cases:
            ref = module(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
            got = session.run(None, feeds)[0]
            keep = feeds["attention_mask"].astype(bool)
            worst = max(worst, float(np.abs(got - ref)[keep].max()))
    report: dict[str, Any] = {
        "model": str(folder),
        "layer": layer,
        "num_layers": int(module.encoder.config.num_hidden_layers),
        "hidden_size": int(module.encoder.config.hidden_size),
        "input_names": names,
        "opset": OPSET,
        "export_seconds": round(export_seconds, 3),
        "optimize_seconds": round(optimize_seconds, 3),
        "fused_operators": fused,
        "parity": {
            "max_abs_diff": worst,
            "atol": PARITY_ATOL,
            "reference": "torch fp32, eager attention; hidden states at unpadded positions",
            "cases": [list(c["input_ids"].shape) for c in cases],
        },
        "model_bytes": (out / MODEL_FILE).stat().st_size,
        "versions": {**_versions(), "python": platform.python_version()},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if optimizer_error:
        report["optimizer_error"] = optimizer_error
    if not worst <= PARITY_ATOL:
        raise ExportError(
            f"{folder}: ONNX hidden states differ from PyTorch by {worst:.3g} "
            f"(allowed {PARITY_ATOL}); nothing was cached",
            report=report,
        )
    _write_report(out, report)


def _trace(module: Any, feeds: dict[str, np.ndarray], path: Path) -> float:
    """torch.onnx.export with dynamic batch and sequence axes; seconds taken."""
    import onnx
    import torch

    names = module.input_names
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "hidden_states"]}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen deliberately (no onnxscript dependency, mature
        # dynamic axes); shape-dependent Python branches in transformers' mask code trace as
        # constants that the parity check on a second batch and length proves harmless.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(feeds[n]) for n in names),
            str(path),
            input_names=names,
            output_names=["hidden_states"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return time.perf_counter() - t0


def _optimize(raw: Path, out: Path, module: Any) -> tuple[float, dict[str, int], str | None]:
    """onnxruntime's transformer fusions (Attention, EmbedLayerNormalization); the raw graph
    is kept, and the reason recorded, when the optimizer cannot handle the model.

    SkipLayerNormalization and BiasGelu are left unfused: their CPU kernels measured slower
    than the plain operators (see :data:`~e2ekit.text.encoding.runners.CPU_DISABLED_OPTIMIZERS`;
    int8 MiniLM-L6 at batch 16 x 64 tokens: 690 sentences/s unfused vs 450 fused).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = module.encoder.config
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_gelu = False
    t0 = time.perf_counter()
    try:
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(getattr(cfg, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(cfg, "hidden_size", 0) or 0),
            optimization_options=options,
        )
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(out))
        error = None
    except Exception as exc:  # the optimizer is an optional speed-up, never a requirement
        shutil.copyfile(raw, out)
        fused, error = {}, f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - t0, fused, error


def _build_int8(out: Path, fp32: ExportedModel, tokenizer: Any) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from e2ekit.text.encoding.runners import ort_session

    t0 = time.perf_counter()
    with _root_log_quiet():
        quantize_dynamic(
            str(fp32.model_path),
            str(out / MODEL_FILE),
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            weight_type=QuantType.QInt8,
            # the fused contrib ops defeat ONNX shape inference; their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    seconds = time.perf_counter() - t0
    feeds = sample_feeds(tokenizer, list(fp32.report["input_names"]))
    mask = feeds["attention_mask"]
    vecs = []
    for path in (fp32.model_path, out / MODEL_FILE):
        vecs.append(_unit(pool_numpy(ort_session(path).run(None, feeds)[0], mask, "mean")))
    cosine = (vecs[0] * vecs[1]).sum(axis=1)
    report = {
        **{k: v for k, v in fp32.report.items() if k not in ("model_bytes", "created_utc")},
        "int8": {
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "reference": "fp32 ONNX export, mean-pooled sample vectors",
            "samples": len(cosine),
            "op_types": list(INT8_OP_TYPES),
            "per_channel": True,
            "weight_type": "QInt8",
            "quantize_seconds": round(seconds, 3),
        },
        "model_bytes": (out / MODEL_FILE).stat().st_size,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_report(out, report)


@contextmanager
def _root_log_quiet() -> Iterator[None]:
    """The quantizer warns through ``logging.warning`` (pre-processing advice that does not
    apply to an already optimised graph), which would also configure the root logger for the
    whole process; a handler held on the root logger meanwhile prevents both."""
    root = logging.getLogger()
    handler = logging.NullHandler()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _write_report(out: Path, report: dict[str, Any]) -> None:
    """Written last: its presence is what marks the cached folder complete."""
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
