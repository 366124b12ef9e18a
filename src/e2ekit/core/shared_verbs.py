"""The verbs every kit has: train, eval, export, predict, serve and bench, with their flags.

``Kit.verbs()`` starts from this table; a kit adds its own verbs, or ``extend``s one of
these with its handler or extra flags. ``e2ekit.core.cli`` adds ``-c``, ``-o`` and
``--out`` to every verb.
"""

from __future__ import annotations

from argparse import ArgumentParser

from e2ekit.core.bench import cmd_bench
from e2ekit.core.kit import Verb
from e2ekit.core.verbs import cmd_eval, cmd_export, cmd_predict, cmd_serve, cmd_train

__all__ = ["shared_verbs"]


def _train_flags(p: ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt")
    p.add_argument("--weights", help="initialise from a checkpoint (fine-tuning)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, metrics and logs)",
    )


def _eval_flags(p: ArgumentParser) -> None:
    p.add_argument("--weights", help="checkpoint file or run folder")
    p.add_argument("--split", default="val", help="data split to evaluate (default: val)")


def _export_flags(p: ArgumentParser) -> None:
    p.add_argument("--weights", help="checkpoint file or run folder")
    p.add_argument(
        "--quantize",
        action="store_true",
        help="also write an int8 model (export.quantize_mode: dynamic|static)",
    )


def _device_flag(p: ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="inference device (default: infer.device, else cpu)",
    )


def _runtime_flags(p: ArgumentParser) -> None:
    """What predict and serve share: which model, on which runtime."""
    p.add_argument("--weights", help="checkpoint (PyTorch, no export needed)")
    p.add_argument("--model", help="export folder (model.onnx + deploy.yaml)")
    p.add_argument("--backend", choices=("onnxruntime", "torch"), help="default: onnxruntime")
    p.add_argument("--precision", choices=("fp32", "int8"), help="int8 needs export --quantize")
    p.add_argument("--threads", type=int, help="inference threads")
    _device_flag(p)


def _predict_flags(p: ArgumentParser) -> None:
    _runtime_flags(p)
    p.add_argument("--input", help="file, folder or list file to predict on")


def _serve_flags(p: ArgumentParser) -> None:
    _runtime_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")


def _bench_flags(p: ArgumentParser) -> None:
    p.add_argument("--model", help="export folder (needs its sample_inputs.npz)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: 1,8)")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per variant and batch size"
    )
    p.add_argument("--threads", type=int, help="inference threads (default: runtime's own)")
    _device_flag(p)


def shared_verbs() -> dict[str, Verb]:
    """A fresh table (kits may build on it without changing another kit's)."""
    return {
        "train": Verb(
            cmd_train,
            "train from a config; writes a run folder (checkpoints, metrics)",
            _train_flags,
        ),
        "eval": Verb(cmd_eval, "metrics of a checkpoint on a data split", _eval_flags),
        "export": Verb(
            cmd_export,
            "ONNX + deploy.yaml from a checkpoint, parity-checked (--quantize: also int8)",
            _export_flags,
        ),
        "predict": Verb(
            cmd_predict,
            "run an export or a checkpoint over a file, folder or list; write predictions",
            _predict_flags,
        ),
        "serve": Verb(
            cmd_serve,
            "serve an export over HTTP: POST /predict, GET /health, GET /metrics",
            _serve_flags,
        ),
        "bench": Verb(
            cmd_bench,
            "speed of an export here: items/s, ms p50/p90; onnxruntime fp32/int8 vs torch",
            _bench_flags,
            out_help="also write the full JSON to this file",
        ),
    }
