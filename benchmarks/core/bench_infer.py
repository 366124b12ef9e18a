"""Inference throughput: e2ekit's Predictor (onnxruntime fp32 / int8) vs PyTorch eager.

Why: every kit ships an export folder served by ``e2ekit.core.infer.Predictor``. This checks
that the path is worth it against what a user would otherwise do - keep the ``nn.Module`` and
call it under ``torch.inference_mode()`` - on the same module, inputs and thread count, and
what int8 (``quantize_int8``) buys in speed and costs in accuracy.

Method: each backend is timed in blocks of about ``--block-s`` seconds. Blocks of the three
backends alternate, with the order rotated every repeat, so drifting machine speed (up to 2x
on shared machines) hits all of them alike. rows/s is the median block over ``--repeats``;
a ratio is the median of the per-repeat ratios of adjacent blocks. Nothing is asserted.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import MLP, ConvNet, environment, export_model, log, median, randomize_bn, warn_if_busy
from torch import nn

from e2ekit.core.export import quantize_int8
from e2ekit.core.infer import Predictor

BACKENDS = ("torch", "ort_fp32", "ort_int8")
Runner = Callable[[], Any]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per backend and case")
    p.add_argument("--block-s", type=float, default=0.2, help="target seconds per timed block")
    p.add_argument("--pause-s", type=float, default=0.05, help="idle time between blocks")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--models", nargs="+", choices=["mlp", "conv"], default=["mlp", "conv"])
    p.add_argument("--image-size", type=int, default=128, help="conv net input is 3xSxS")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build(name: str, image_size: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The module and the shape of one input row (without the batch axis)."""
    if name == "mlp":
        return MLP(), (256,)
    net = ConvNet()
    randomize_bn(net)
    return net, (3, image_size, image_size)


def calibrate(run: Runner, block_s: float) -> int:
    """Iterations that fill about ``block_s`` seconds (after two warm-up calls)."""
    run()
    run()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min(0.05, block_s):
        run()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    return max(3, round(block_s / per_call))


def time_block(run: Runner, iterations: int) -> float:
    """Seconds for ``iterations`` calls; one untimed call first wakes this runtime's threads."""
    run()
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    return time.perf_counter() - start


def runners(
    module: nn.Module, predictors: dict[str, Predictor], x: np.ndarray
) -> dict[str, Runner]:
    """Zero-argument callables, one per backend, all on the same input array."""
    x_torch = torch.from_numpy(x)  # shares memory with x: same bytes for every backend
    feeds = {"x": x}

    def eager() -> Any:
        with torch.inference_mode():
            return module(x_torch)

    return {
        "torch": eager,
        "ort_fp32": lambda: predictors["fp32"].run(feeds),
        "ort_int8": lambda: predictors["int8"].run(feeds),
    }


def bench_case(run_by_backend: dict[str, Runner], batch: int, args: argparse.Namespace) -> dict:
    """Alternate timed blocks of every backend; medians of rows/s and of paired ratios."""
    iterations = {b: calibrate(run, args.block_s) for b, run in run_by_backend.items()}
    rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    ratios: dict[str, list[float]] = {"ort_fp32_vs_torch": [], "ort_int8_vs_torch": []}
    for rep in range(args.repeats):
        order = BACKENDS[rep % len(BACKENDS) :] + BACKENDS[: rep % len(BACKENDS)]
        now: dict[str, float] = {}
        for backend in order:
            time.sleep(args.pause_s)  # let the other runtime's spinning threads go idle
            seconds = time_block(run_by_backend[backend], iterations[backend])
            now[backend] = batch * iterations[backend] / seconds
            rates[backend].append(now[backend])
        ratios["ort_fp32_vs_torch"].append(now["ort_fp32"] / now["torch"])
        ratios["ort_int8_vs_torch"].append(now["ort_int8"] / now["torch"])
    return {
        "rows_per_s": {b: round(median(v), 1) for b, v in rates.items()},
        **{k: round(median(v), 3) for k, v in ratios.items()},
    }


def bench_model(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Export and quantize one model as a kit does, then time every batch size."""
    torch.manual_seed(args.seed)
    module, row_shape = build(name, args.image_size)
    module.eval()
    gen = torch.Generator().manual_seed(args.seed)
    example = torch.randn(2, *row_shape, generator=gen)
    parity = torch.randn(5, *row_shape, generator=gen)

    log(f"[{name}] export + int8 quantization")
    export_dir = workdir / name
    report = export_model(module, example, parity, export_dir)
    int8 = quantize_int8(export_dir)
    predictors = {
        p: Predictor(export_dir, num_threads=args.threads, precision=p) for p in ("fp32", "int8")
    }

    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {
        "params": sum(p.numel() for p in module.parameters()),
        "input_row_shape": list(row_shape),
        "parity_max_abs_diff": report["onnx"]["max_abs_diff"],
        "int8_max_abs_diff": int8["max_abs_diff"],
        "int8_size_ratio": int8["size_ratio"],
        "batches": {},
    }
    for batch in args.batch_sizes:
        x = rng.standard_normal((batch, *row_shape), dtype=np.float32)
        run_by_backend = runners(module, predictors, x)
        log(f"[{name}] batch {batch}: timing {', '.join(BACKENDS)}")
        case = bench_case(run_by_backend, batch, args)
        # Sanity check on the timed inputs: every backend computes the same function.
        ref = run_by_backend["torch"]().numpy()
        case["check_max_abs_diff"] = {
            b: float(np.abs(run_by_backend[b]()["y"] - ref).max()) for b in ("ort_fp32", "ort_int8")
        }
        log(f"[{name}] batch {batch}: {case}")
        result["batches"][str(batch)] = case
    return result


def main() -> None:
    args = parse_args()
    warn_if_busy()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "benchmark": "core.infer",
        "env": environment(args.threads),
        "repeats": args.repeats,
        "block_s": args.block_s,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-infer-") as tmp:
        for name in args.models:
            out["models"][name] = bench_model(name, Path(tmp), args)
    out["loadavg_1m_end"] = os.getloadavg()[0]
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
