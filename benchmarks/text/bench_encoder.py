"""Sentence-embedding throughput: e2ekit's Encoder vs sentence-transformers, MiniLM-L6.

Why: the Encoder exists to embed faster than the usual library on the same CPU (or GPU)
without changing the vectors. This measures sentences/s for batch sizes x input lengths,
all variants in one run on one machine, and checks that they agree on the vectors:

- ``ours_ort_fp32``: ``Encoder(backend="onnxruntime")``, optimised ONNX graph;
- ``ours_ort_int8``: the same, ``precision="int8"`` (dynamic int8 quantisation);
- ``ours_torch``: ``Encoder(backend="torch")``, eager PyTorch (SDPA);
- ``st_torch``: ``SentenceTransformer(folder).encode`` (the baseline of every ratio);
- ``st_onnx``: sentence-transformers' ONNX backend, when it works offline (it needs
  optimum); otherwise a note says why it was left out.

``--device cuda`` measures the CUDA variants instead (``ours_torch_cuda``, ``st_cuda``, each
also under fp16 and bf16 autocast, and ``ours_ort_cuda`` when onnxruntime has its CUDA
provider); the baseline is then ``st_cuda``.

Texts are English-like (common words, some punctuation), each exactly ``length`` tokens
with the special tokens. Each variant encodes rotating batches for ``--seconds`` per round,
the variants alternating, for ``--rounds`` rounds per cell: sentences/s is the median round,
a ratio the median of the per-round ratios (a busy moment slows both sides of a round).
Every variant's time includes its tokenization and pooling.

Usage::

    PYTHONPATH=src python benchmarks/text/bench_encoder.py            # full grid
    PYTHONPATH=src python benchmarks/text/bench_encoder.py --quick    # smoke run
    PYTHONPATH=src python benchmarks/text/bench_encoder.py --device cuda --model /path/to/dir

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_env import cpu_flags, cpu_model, emit, load_now, log

BATCHES = (1, 16, 64)
LENGTHS = (16, 64, 256)
QUICK_BATCHES = (1, 16)
QUICK_LENGTHS = (16, 64)
GOAL = {"variant": "ours_ort_int8", "batch": 16, "length": 64, "min_ratio": 3.0}
# Common English words; the text generator draws from them.
WORD_TEXT = (
    "the people city year government report water music house company river school market "
    "family history light morning night question answer power system village country road "
    "station window garden doctor teacher student problem result idea story change group "
    "morning evening summer winter money energy health science computer language reason "
    "result picture paper table minute street office party is was are were has had will "
    "would could should may might can must does did make take give find think know want "
    "look use work call try ask need feel leave put mean keep let begin seem help show "
    "hear play run move live believe bring new old good great small large long little high "
    "young important different early public free strong local national quick bright quiet "
    "simple clear recent final of in to for with on at from by about into over after "
    "between under through and but or so because while although if when where before since "
    "until she he they we it this that these those every some many most other each"
)
WORDS = tuple(WORD_TEXT.split())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="model folder or the alias minilm")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="batches 1,16 x lengths 16,64, short")
    p.add_argument("--batches", help="comma list (default 1,16,64)")
    p.add_argument("--lengths", help="comma list of token counts (default 16,64,256)")
    p.add_argument("--variants", help="comma subset of the variants")
    p.add_argument("--seconds", type=float, help="timed seconds per variant/round (1.0)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per cell, median (3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    p.add_argument("--out", type=Path, help="also write the JSON line to this file")
    return p.parse_args()


def _ints(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else default


def make_texts(tokenizer: Any, length: int, count: int, seed: int) -> list[str]:
    """``count`` texts of exactly ``length`` tokens (special tokens included)."""
    rng = np.random.default_rng(seed)
    cost = {w: len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in (*WORDS, ",", ".")}
    specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
    one = [w for w in WORDS if cost[w] == 1]
    texts = []
    for _ in range(count):
        words: list[str] = []
        left = length - specials
        while left > 0:
            w = str(rng.choice(WORDS))
            if cost[w] > left:
                w = str(rng.choice(one))
            words.append(w)
            left -= cost[w]
            if left >= 2 and rng.random() < 0.08:
                words.append("." if rng.random() < 0.5 else ",")
                left -= 1
        text = " ".join(words).replace(" .", ".").replace(" ,", ",")
        texts.append(text[:1].upper() + text[1:])
    return texts


def measure(
    fn: Callable[[list[str]], Any],
    pool: list[str],
    batch: int,
    seconds: float,
    ctx: Callable[[], AbstractContextManager[Any]],
) -> float:
    """Sentences/s over rotating batches of ``pool`` for at least ``seconds`` (2 calls min)."""
    calls, start = 0, time.perf_counter()
    with ctx():
        while True:
            k = (calls * batch) % len(pool)
            fn(pool[k : k + batch])
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= 2:
                return batch * calls / elapsed


def autocast(dtype_name: str) -> Callable[[], AbstractContextManager[Any]]:
    import torch

    dtype = getattr(torch, dtype_name)
    return lambda: torch.autocast("cuda", dtype=dtype)


def build_variants(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], list[str]]:
    """name -> (encode function, context factory, object with a report); and notes."""
    import torch
    from sentence_transformers import SentenceTransformer

    from e2ekit.core.infer import onnxruntime_has_cuda
    from e2ekit.text import Encoder

    notes: list[str] = []
    variants: dict[str, Any] = {}
    plain = nullcontext

    def ours(**kw: Any) -> Any:
        enc = Encoder(str(folder), threads=args.threads, **kw)
        return (lambda texts: enc.encode(texts, batch_size=len(texts))), enc

    def st(**kw: Any) -> Any:
        model = SentenceTransformer(str(folder), **kw)
        return (
            lambda texts: model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        ), model

    if args.device == "cpu":
        fn, enc = ours(backend="onnxruntime", device="cpu")
        variants["ours_ort_fp32"] = (fn, plain, enc)
        fn, enc = ours(backend="onnxruntime", precision="int8")
        variants["ours_ort_int8"] = (fn, plain, enc)
        fn, enc = ours(backend="torch", device="cpu")
        variants["ours_torch"] = (fn, plain, enc)
        fn, model = st(device="cpu")
        variants["st_torch"] = (fn, plain, model)
        try:
            fn, model = st(device="cpu", backend="onnx")
            variants["st_onnx"] = (fn, plain, model)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            notes.append(f"st_onnx left out: sentence-transformers' ONNX backend failed ({first})")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        fn, enc = ours(backend="torch", device="cuda")
        for name, ctx in (("", plain), ("_fp16", autocast("float16"))):
            variants[f"ours_torch_cuda{name}"] = (fn, ctx, enc)
        if torch.cuda.is_bf16_supported():
            variants["ours_torch_cuda_bf16"] = (fn, autocast("bfloat16"), enc)
        if onnxruntime_has_cuda():
            fn2, enc2 = ours(backend="onnxruntime", device="cuda")
            variants["ours_ort_cuda"] = (fn2, plain, enc2)
        else:
            notes.append("ours_ort_cuda left out: onnxruntime has no CUDAExecutionProvider")
        fn, model = st(device="cuda")
        variants["st_cuda"] = (fn, plain, model)
        variants["st_cuda_fp16"] = (fn, autocast("float16"), model)
        if torch.cuda.is_bf16_supported():
            variants["st_cuda_bf16"] = (fn, autocast("bfloat16"), model)
    if args.variants:
        keep = set(args.variants.split(","))
        unknown = keep - set(variants)
        if unknown:
            raise SystemExit(f"unknown or unavailable variants {sorted(unknown)}: {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in keep}
    return variants, notes


def agreement(variants: dict[str, Any], texts: list[str], base: str) -> dict[str, float]:
    """Lowest cosine of each variant's vectors to the baseline's, on the same texts."""
    vecs = {}
    for name, (fn, ctx, _) in variants.items():
        with ctx():
            v = np.asarray(fn(texts), dtype=np.float32)
        vecs[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
    if base not in vecs:
        return {}
    return {
        n: round(float((v * vecs[base]).sum(axis=1).min()), 5) for n, v in vecs.items() if n != base
    }


def main() -> None:
    args = parse_args()
    import sentence_transformers
    import torch
    import transformers
    from transformers import AutoTokenizer

    from e2ekit.text.models.pretrained import resolve_model_dir

    t_start = time.perf_counter()
    load_start = load_now("start")
    torch.set_num_threads(args.threads)
    folder = resolve_model_dir(args.model, "--model", weights=True)
    batches = _ints(args.batches, QUICK_BATCHES if args.quick else BATCHES)
    lengths = _ints(args.lengths, QUICK_LENGTHS if args.quick else LENGTHS)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 1.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    log(f"model {folder}, device {args.device}, threads {args.threads}")

    variants, notes = build_variants(args, folder)
    base = "st_torch" if args.device == "cpu" else "st_cuda"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    check_texts = [*make_texts(tokenizer, 64, 32, seed=1), "Hi.", "A man is playing a guitar."]
    agree = agreement(variants, check_texts, base)

    cells = []
    for length in lengths:
        for batch in batches:
            pool = make_texts(tokenizer, length, batch * max(4, math.ceil(32 / batch)), seed=2)
            runs: dict[str, list[float]] = {name: [] for name in variants}
            for rnd in range(rounds):
                for name, (fn, ctx, _) in variants.items():
                    if rnd == 0:
                        with ctx():
                            fn(pool[:batch])  # warm-up: lazy init, allocator, kernel choice
                    runs[name].append(measure(fn, pool, batch, seconds, ctx))
            sps = {k: round(statistics.median(v), 1) for k, v in runs.items()}
            ratio = {}
            if base in runs:  # median of per-round ratios: a slow round slows both sides
                ratio = {
                    k: round(
                        statistics.median([a / b for a, b in zip(v, runs[base], strict=True)]), 2
                    )
                    for k, v in runs.items()
                    if k != base
                }
            log(f"batch {batch:3d} length {length:3d}: {sps} ratio vs {base}: {ratio}")
            cells.append({"batch": batch, "length": length, "sps": sps, "ratio": ratio})

    goal: dict[str, Any] = {**GOAL, "baseline": base}
    hit = [c for c in cells if (c["batch"], c["length"]) == (GOAL["batch"], GOAL["length"])]
    if hit and GOAL["variant"] in hit[0]["ratio"]:
        goal["ratio"] = hit[0]["ratio"][GOAL["variant"]]
        goal["met"] = goal["ratio"] >= GOAL["min_ratio"]
    reports = {}
    for name, (_, _, obj) in variants.items():
        report = getattr(obj, "report", None)
        if isinstance(report, dict):
            reports[name] = {
                "parity_max_abs_diff": report["parity"]["max_abs_diff"],
                "export_seconds": report["export_seconds"],
                "fused_operators": report.get("fused_operators"),
                **({"int8": report["int8"]} if "int8" in report else {}),
            }
    import onnxruntime

    emit(
        {
            "bench": "text_encoder",
            "model": str(folder),
            "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "threads": args.threads,
            "quick": args.quick,
            "seconds_per_cell": seconds,
            "rounds": rounds,
            "baseline": base,
            "cells": cells,
            "goal": goal,
            "agreement_min_cosine_vs_baseline": agree,
            "exports": reports,
            "notes": notes,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "load_avg": [load_start, load_now("end")],
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
