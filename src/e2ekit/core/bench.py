"""``e2ekit <kit> bench --model EXPORT_DIR``: how fast an export runs on this machine.

Kit-agnostic: the inputs are the ones export saved in ``sample_inputs.npz``, cycled along
axis 0 to each batch size, so no kit code or data is needed. Every variant the folder can
run (onnxruntime fp32, int8, eager torch) gets the same inputs, thread count and time
budget, and is compared with eager torch, the baseline a user would otherwise keep.

The ``infer`` settings apply as for predict (``--threads``, ``--device``, then ``-o infer.*``,
then ``-c``'s ``infer`` section): ``infer.backend`` / ``infer.precision``, when set, narrow the
variants to those they name; on ``cuda`` a variant that cannot run there is skipped with the
reason (no fallback to another backend, so each row measures what its name says).
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.core.infer import (
    SAMPLE_INPUTS_FILE,
    WEIGHTS_FILE,
    Predictor,
    cuda_unsupported,
    load_deploy,
    load_sample_inputs,
    torch_builder_refusal,
)
from e2ekit.core.logs import jsonable, log
from e2ekit.core.progress import progress
from e2ekit.core.schema import InferConfig
from e2ekit.core.verbs import check_device, load_export_config, refuse_other_kit

# name -> (backend, precision); the order is the run order.
VARIANTS = {
    "onnxruntime_fp32": ("onnxruntime", "fp32"),
    "onnxruntime_int8": ("onnxruntime", "int8"),
    "torch": ("torch", "fp32"),
}
WARMUP_CALLS = 3


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; a wrong value fails with the flag named, not a traceback."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise E2EError(f"--batch-sizes {text!r}: expected positive integers such as 1,8")
    return sizes


def batch_inputs(sample: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The saved case cycled (tiled or sliced) along axis 0 to ``batch_size`` rows."""
    return {n: a[np.arange(batch_size) % a.shape[0]] for n, a in sample.items()}


def _usable_batch_sizes(deploy: dict[str, Any], sizes: list[int]) -> list[int]:
    """A model exported with a fixed batch axis runs at that size only."""
    fixed = {
        i["shape"][0] for i in deploy["inputs"] if i.get("shape") and isinstance(i["shape"][0], int)
    }
    if not fixed:
        return sizes
    log.warning("the model's batch axis is fixed at %s; benchmarking that size only", fixed)
    return sorted(fixed)


def time_calls(predictor: Predictor, feeds: dict[str, np.ndarray], seconds: float) -> list[float]:
    """Per-call seconds for about ``seconds`` (at least 5 calls), after warm-up calls."""
    for _ in range(WARMUP_CALLS):
        predictor.run(feeds)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        predictor.run(feeds)
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], batch_size: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {
        "items_per_s": round(batch_size * len(times) / float(np.sum(times)), 1),
        "ms_p50": round(float(np.percentile(ms, 50)), 4),
        "ms_p90": round(float(np.percentile(ms, 90)), 4),
        "calls": len(times),
    }


def _available(folder: Path, deploy: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Variants this folder can run, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if not deploy.get("int8_model_file"):
        skipped["onnxruntime_int8"] = "no model.int8.onnx (export with --quantize)"
    refused = torch_builder_refusal(folder, deploy)
    if refused:
        log.warning("%s", refused)
        skipped["torch"] = refused
    elif not (folder / WEIGHTS_FILE).is_file() or not (deploy.get("torch") or {}).get("builder"):
        skipped["torch"] = f"no {WEIGHTS_FILE} / torch builder in the export"
    return [v for v in VARIANTS if v not in skipped], skipped


def _narrow(variants: list[str], skipped: dict[str, str], settings: InferConfig) -> dict[str, str]:
    """Each variant the settings allow -> its device; the others go to ``skipped`` with why."""
    chosen = settings.model_fields_set
    devices: dict[str, str] = {}
    for name in variants:
        backend, precision = VARIANTS[name]
        if "backend" in chosen and backend != settings.backend:
            skipped[name] = f"infer.backend is {settings.backend}"
            continue
        if "precision" in chosen and precision != settings.precision:
            skipped[name] = f"infer.precision is {settings.precision}"
            continue
        why = None if settings.device == "cpu" else cuda_unsupported(backend, precision)
        if why and settings.device == "cuda":
            skipped[name] = f"not on cuda: {why}"
            continue
        devices[name] = "cpu" if settings.device == "cpu" or why else "cuda"
    return devices


def _torch_threads() -> int | None:
    """torch's thread count, if loaded: the torch backend's ``--threads`` is process-wide."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads(n: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def refuse_kit_infer_keys(settings: InferConfig) -> None:
    """bench times the exported model on its sample inputs alone: an ``infer`` key a kit adds
    (ctr's ``kv``, where rows are looked up) has no effect there, so setting it is refused."""
    own = InferConfig.model_fields
    for key, field in type(settings).model_fields.items():
        if key not in own and getattr(settings, key) != field.default:
            raise ConfigError(
                f"infer.{key}: bench times the exported model on its sample inputs and does "
                f"not use infer.{key}; it applies to predict and serve"
            )


def cmd_bench(kit: Any, args: Namespace) -> dict[str, Any]:
    """Throughput and latency of each variant of an export folder, per batch size."""
    if not args.model:
        raise E2EError("--model is required: an export folder (from `export`)")
    folder = Path(args.model)
    if not folder.is_dir():
        raise E2EError(f"--model {args.model}: no such folder")
    if not (folder / SAMPLE_INPUTS_FILE).is_file():
        raise E2EError(
            f"--model {args.model}: no {SAMPLE_INPUTS_FILE} in the folder (not an export, or "
            f"an old one); re-export: e2ekit {kit.name} export --weights RUN --out EXPORT_DIR"
        )
    if args.seconds <= 0:
        raise E2EError(f"--seconds {args.seconds}: must be > 0")
    if args.threads is not None and args.threads < 1:
        raise E2EError(f"--threads {args.threads}: must be >= 1")
    settings = load_export_config(kit, args).infer
    refuse_kit_infer_keys(settings)
    check_device(settings, args)
    try:
        deploy = load_deploy(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise E2EError(str(exc)) from None
    refuse_other_kit(kit, deploy, "bench")
    sample = load_sample_inputs(folder)[0]
    available, skipped = _available(folder, deploy)
    devices = _narrow(available, skipped, settings)
    if not devices:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise E2EError(f"--model {args.model}: no variant to benchmark ({reasons})")
    sizes = _usable_batch_sizes(deploy, parse_batch_sizes(args.batch_sizes))
    threads = settings.num_threads
    results: dict[str, dict[str, dict[str, float]]] = {}
    runtimes: dict[str, dict[str, Any]] = {}
    torch_threads = _torch_threads()
    try:
        with progress(total=len(devices) * len(sizes), desc="bench", unit="run") as bar:
            for name, device in devices.items():
                backend, precision = VARIANTS[name]
                try:
                    predictor = Predictor(
                        folder,
                        backend=backend,
                        precision=precision,
                        num_threads=threads,
                        device=device,
                    )
                except FileNotFoundError as exc:
                    raise E2EError(str(exc)) from None
                runtimes[name] = predictor.runtime
                results[name] = {}
                for bs in sizes:
                    bar.set_postfix_str(f"{name} batch {bs}")
                    times = time_calls(predictor, batch_inputs(sample, bs), args.seconds)
                    results[name][str(bs)] = _summary(times, bs)
                    bar.update()
    finally:
        _restore_torch_threads(torch_threads)
    summary: dict[str, Any] = {
        "model": str(folder.resolve()),
        "threads": threads,
        "device": settings.device,
        "seconds": args.seconds,
        "batch_sizes": sizes,
        "runtimes": runtimes,
        "results": results,
        "skipped": skipped,
    }
    if "torch" in results and len(results) > 1:
        summary["speedup_vs_torch"] = {
            name: {
                bs: round(r["items_per_s"] / results["torch"][bs]["items_per_s"], 3)
                for bs, r in per_bs.items()
            }
            for name, per_bs in results.items()
            if name != "torch"
        }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    return summary
