"""CTR training throughput and validation AUC: e2ekit's ctr trainer vs DeepCTR-Torch 0.3 (CPU).

Why: the ctr kit claims PaddleRec / ElasticCTR style training (large-batch sync, Hogwild
async) in PyTorch. This measures, in one run, on the same generated data, machine and thread
budget, what a user gets from our trainer and from DeepCTR-Torch, the usual PyTorch library
for these models, for DeepFM and DCN: training samples/s over one epoch AND the validation
AUC that epoch reached (a faster trainer that learns less is no win).

Variants (``--variants``; every one trains a fresh model from the same seed, one epoch):

- ``ours_sync_b4096`` / ``ours_sync_b1024``: ``CtrTrainer.train_pass`` with
  ``train.mode=sync`` at our default batch 4096 and at DeepCTR's 1024. The time INCLUDES
  parsing and hashing the TSV (in the stream's prefetch thread, on the same 2 cores):
  what ``e2ekit ctr train`` pays end to end.
- ``ours_sync_b4096_preparsed`` / ``ours_sync_b1024_preparsed``: the batches of
  ``make_stream(cfg, train, train=True)`` materialised in a list first (untimed, reported as
  ``parse_seconds``), then a timed loop of ``trainer.stepper.step(batch)``: like for like with
  DeepCTR, whose timed ``fit`` excludes its pandas preprocessing.
- ``ours_async_1w`` / ``ours_async_2w``: ``train.mode=async`` (Hogwild processes on shared
  tables) with 1 and 2 workers, the thread budget split over them (2 threads: 1 x 2, 2 x 1).
  The pool is spawned by the first ``train_pass``; a warm-up pass over an EMPTY file starts it
  (spawn, imports, worker set-up: reported as ``startup_s``) without training anything, so
  the timed second pass is the steady state (parsing included, each worker parsing its own
  byte range). ``cold_samples_s`` adds the start-up back in.
- ``ours_sync_b4096_bf16`` / ``ours_async_2w_bf16``: the same with ``train.amp: bf16``
  (the dense part under bfloat16 autocast; table rows and optimizer state stay fp32): fast
  on CPUs with AMX / AVX-512 BF16, slow elsewhere (``env.cpu_flags`` says which this was).
- ``deepctr_b1024``: DeepCTR-Torch 0.3.0 in its own venv (``_deepctr_env.py``) and process
  (``_deepctr_worker.py``): pandas + LabelEncoder preprocessing (untimed), timed
  ``model.fit(batch_size=1024, epochs=1)``.

Matched settings: embedding dim 8, MLP 256-128, DCN 2 cross layers, Adam lr 1e-3 (ours:
``optim`` and ``sparse_optim`` both Adam at that lr), one epoch in file order, torch threads
``--threads`` (default 2) in total per variant. Tables differ by design: ours hashes each of
the 26 slots into 2**18 buckets; DeepCTR has one exact LabelEncoder vocabulary per slot (fitted
on train + val); both sizes are reported. Dense inputs are log(x + 1) on both sides; AUC and
logloss come from the same ``CtrMetrics`` code on both sides.

Data: ``write_synthetic_criteo`` train (``--rows``) and an independent val draw of the same
hidden click model (``sample=1``), cached under ``--data-dir``; ``bayes_auc`` is the AUC of the
generator's true probabilities on val, the ceiling for every model. Then the real 100-row
PaddleRec Criteo sample (``/work/shared/data/ctr/paddlerec_sample``), AUC only: too small for
throughput; both sides train ``--real-epochs`` (10, as DeepCTR's Criteo example) at
``--real-batch`` (32), since one epoch at batch 1024 would be a single step. It checks that
both pipelines read real Criteo lines and learn, not model quality.

Each variant is one full epoch, so variants run one after another (not alternated as in the
other benchmarks); the 1-min load average before and after each is recorded, and a warning
goes to stderr when it exceeds the CPU count. Nothing is asserted.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Our progress bars (tqdm) would cost time in the timed loops and flood stderr; spawned
# Hogwild workers inherit this too. (CtrTrainer ignores train.progress, see README.)
os.environ.setdefault("E2EKIT_NO_PROGRESS", "1")

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_env import cpu_flags, cpu_model, emit, load_now, log  # noqa: E402
from _deepctr_env import DEFAULT_VENV, PEER, ensure_venv  # noqa: E402

from e2ekit.ctr.config import CtrConfig  # noqa: E402
from e2ekit.ctr.data.builtin import data_cache_dir  # noqa: E402
from e2ekit.ctr.data.splits import make_stream  # noqa: E402
from e2ekit.ctr.data.synthetic import bayes_auc, write_synthetic_criteo  # noqa: E402
from e2ekit.ctr.engine.fit import CtrTrainer  # noqa: E402

WORKER = HERE / "_deepctr_worker.py"
REAL_SAMPLE = Path("/work/shared/data/ctr/paddlerec_sample")
MODELS = ("deepfm", "dcn")
VARIANTS = (
    "ours_sync_b4096",
    "ours_sync_b1024",
    "ours_sync_b4096_preparsed",
    "ours_sync_b1024_preparsed",
    "ours_async_1w",
    "ours_async_2w",
    "ours_sync_b4096_bf16",
    "ours_async_2w_bf16",
    "deepctr_b1024",
)
HASH_SIZE = 2**18
EMBED_DIM = 8
MLP = (256, 128)
CROSS_LAYERS = 2
LR = 1e-3
SEED = 1024  # model init, both sides (DeepCTR's default seed)
SPARSE = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *SPARSE]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000, help="generated train rows")
    p.add_argument("--val-rows", type=int, default=200_000, help="generated val rows")
    p.add_argument("--models", default="deepfm,dcn", help=f"comma list of {list(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma subset of {VARIANTS}")
    p.add_argument("--threads", type=int, default=2, help="torch threads per variant, in total")
    p.add_argument("--data-seed", type=int, default=0, help="the synthetic generator's seed")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cache of generated data (default: $E2EKIT_DATA or ~/.cache/e2ekit/data, bench-ctr/)",
    )
    p.add_argument("--deepctr-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--real-sample", type=Path, default=REAL_SAMPLE)
    p.add_argument("--no-real", action="store_true", help="skip the real PaddleRec sample")
    p.add_argument("--real-batch", type=int, default=32, help="batch size on the real sample")
    p.add_argument("--real-epochs", type=int, default=10, help="epochs on the real sample")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = p.parse_args()
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [m for m in args.model_list if m not in MODELS]
    bad += [v for v in args.variant_list if v not in VARIANTS]
    if bad:
        p.error(f"unknown --models/--variants {bad}; models {MODELS}, variants {VARIANTS}")
    return args


# --------------------------------------------------------------------------- data


def generated(folder: Path, rows: int, seed: int, sample: int) -> Path:
    """``folder/part-0.tsv`` of the synthetic generator, written once (atomic rename)."""
    data = folder / "part-0.tsv"
    if data.is_file() and (folder / "probs.npy").is_file() and (folder / "labels.npy").is_file():
        return data
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    log(f"generating {rows} synthetic Criteo rows (sample {sample}) into {folder}")
    try:
        write_synthetic_criteo(tmp, rows=rows, seed=seed, sample=sample)
        if folder.exists():
            shutil.rmtree(folder)  # a partial copy
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data


def deepctr_table_rows(paths: list[Path]) -> int:
    """Rows of DeepCTR's embedding tables: per slot, distinct values (missing = "-1") + 1."""
    read = pcsv.ReadOptions(column_names=COLUMNS)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False)
    convert = pcsv.ConvertOptions(
        include_columns=SPARSE,
        column_types=dict.fromkeys(SPARSE, pa.string()),
        strings_can_be_null=True,
    )
    tables = [pcsv.read_csv(str(p), read, parse, convert) for p in paths]
    total = 0
    for col in SPARSE:
        values = pa.chunked_array([c for t in tables for c in t.column(col).chunks])
        vocab = pc.count_distinct(values, mode="only_valid").as_py()
        total += vocab + int(values.null_count > 0) + 1  # the worker's vocabulary_size + 1
    return total


# --------------------------------------------------------------------------- ours


def make_config(
    model: str,
    train: Path,
    val: Path,
    *,
    batch: int,
    mode: str,
    workers: int,
    threads: int,
    amp: str = "off",
) -> CtrConfig:
    spec: dict[str, Any] = {
        "type": model,
        "hash_size": HASH_SIZE,
        "embed_dim": EMBED_DIM,
        "mlp_dims": list(MLP),
    }
    if model == "dcn":
        spec["num_layers"] = CROSS_LAYERS
    return CtrConfig.model_validate(
        {
            "seed": SEED,
            "device": "cpu",
            "model": spec,
            "data": {"train": str(train), "val": str(val), "format": "criteo"},
            "train": {
                "mode": mode,
                "workers": workers,
                "threads": threads,
                "batch_size": batch,
                "amp": amp,
                "epochs": 1,
                "progress": False,
                "tensorboard": False,
            },
            "optim": {"type": "adam", "lr": LR},
            "sparse_optim": {"type": "adam", "lr": LR},
        }
    )


def scored(trainer: CtrTrainer, val: Path, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)  # an async parent may have set fewer; eval is untimed
    metrics = trainer.evaluate_paths(str(val))
    return {"val_auc": metrics["auc"], "val_logloss": metrics["logloss"]}


def run_ours(
    variant: str, model: str, train: Path, val: Path, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Train one epoch of ``variant`` from a fresh model; rates, val AUC and details."""
    batch = 1024 if "_b1024" in variant else 4096
    workers = 2 if "_2w" in variant else 1
    mode = "async" if "_async_" in variant else "sync"
    amp = "bf16" if variant.endswith("_bf16") else "off"
    if mode == "async":
        batch = 4096  # the async default: each worker steps its own batches
    threads = max(1, args.threads // workers)
    cfg = make_config(
        model, train, val, batch=batch, mode=mode, workers=workers, threads=threads, amp=amp
    )
    trainer = CtrTrainer(cfg, tmp / f"run_{model}_{variant}")  # the folder is never created
    out: dict[str, Any] = {
        "batch_size": batch,
        "mode": mode,
        "amp": amp,
        "workers": workers,
        "threads_per_process": threads,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "table_rows": int(trainer.stepper.table.shape[0]),
        "table_width": trainer.stepper.width,
        "loadavg_1m_before": load_now(variant),
    }
    try:
        if variant.endswith("_preparsed"):
            t0 = time.perf_counter()
            batches = list(make_stream(cfg, str(train), train=True))
            out["parse_seconds"] = round(time.perf_counter() - t0, 3)
            rows = sum(len(b["label"]) for b in batches)
            trainer.model.train()
            step = trainer.stepper.step
            t0 = time.perf_counter()
            for b in batches:
                step(b)
            seconds = time.perf_counter() - t0
            del batches
        else:
            if mode == "async":
                empty = tmp / "empty.tsv"
                empty.touch()
                t0 = time.perf_counter()
                trainer.train_pass(str(empty), epoch=0)  # starts the pool; trains nothing
                out["startup_s"] = round(time.perf_counter() - t0, 3)
            stats = trainer.train_pass(str(train), epoch=0)
            rows, seconds = int(stats["rows"]), float(stats["seconds"])
            if mode == "async":
                out["cold_samples_s"] = round(rows / (seconds + out["startup_s"]), 1)
        out.update(rows=rows, train_seconds=round(seconds, 3))
        out["train_samples_s"] = round(rows / max(seconds, 1e-9), 1)
        out["loadavg_1m_after"] = load_now(variant)
        out.update(scored(trainer, val, args.threads))
    finally:
        trainer.close()
        del trainer
        gc.collect()
    return out


# --------------------------------------------------------------------------- DeepCTR


def run_deepctr(
    python: Path,
    model: str,
    train: Path,
    val: Path,
    args: argparse.Namespace,
    *,
    batch: int = 1024,
    epochs: int = 1,
) -> dict[str, Any]:
    flags = {
        "train": train,
        "val": val,
        "model": model,
        "embed-dim": EMBED_DIM,
        "mlp": ",".join(map(str, MLP)),
        "batch-size": batch,
        "epochs": epochs,
        "lr": LR,
        "threads": args.threads,
        "cross-layers": CROSS_LAYERS,
        "seed": SEED,
    }
    cmd = [str(python), str(WORKER)] + [a for k, v in flags.items() for a in (f"--{k}", str(v))]
    before = load_now("deepctr")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{WORKER.name} printed no JSON line: {proc.stdout[-500:]!r}")
    out = json.loads(lines[-1])
    out.update(loadavg_1m_before=before, loadavg_1m_after=load_now("deepctr"))
    return out


# --------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 4) if a is not None and b is not None else None


def bench_model(
    model: str, train: Path, val: Path, args: argparse.Namespace, tmp: Path, python: Path | None
) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for variant in args.variant_list:
        log(f"[{model}] {variant}: training one epoch")
        if variant == "deepctr_b1024":
            assert python is not None
            runs[variant] = run_deepctr(python, model, train, val, args)
        else:
            runs[variant] = run_ours(variant, model, train, val, args, tmp)
        r = runs[variant]
        log(
            f"[{model}] {variant}: {r['train_samples_s']:.0f} samples/s, "
            f"val AUC {r['val_auc']:.4f} ({r['train_seconds']:.1f} s)"
        )
    rate = {k: r["train_samples_s"] for k, r in runs.items()}
    auc = {k: r["val_auc"] for k, r in runs.items()}
    peer = "deepctr_b1024"
    ratios = {f"{k}_vs_deepctr": ratio(v, rate.get(peer)) for k, v in rate.items() if k != peer}
    ratios["async_2w_vs_1w"] = ratio(rate.get("ours_async_2w"), rate.get("ours_async_1w"))
    ratios["preparsed_vs_parsing_b4096"] = ratio(
        rate.get("ours_sync_b4096_preparsed"), rate.get("ours_sync_b4096")
    )
    tables: dict[str, Any] = {}
    ours_runs = [r for k, r in runs.items() if k != peer]
    if ours_runs:
        tables.update(ours_rows=ours_runs[0]["table_rows"], ours_width=ours_runs[0]["table_width"])
        tables["ours_params"] = ours_runs[0]["params"]
    if peer in runs:
        tables["deepctr_params"] = runs[peer]["params"]
    return {
        "train_samples_s": rate,
        "val_auc": auc,
        "val_logloss": {k: r["val_logloss"] for k, r in runs.items()},
        "ratios": ratios,
        "auc_diff_vs_deepctr": {k: diff(v, auc.get(peer)) for k, v in auc.items() if k != peer},
        "tables": tables,
        "runs": runs,
    }


def bench_real(
    folder: Path, models: list[str], args: argparse.Namespace, tmp: Path, python: Path | None
) -> dict[str, Any]:
    """AUC on the real PaddleRec sample: ours sync and DeepCTR, same batch and epochs."""
    train, val = folder / "sample_train.txt", folder / "sample_test.txt"
    if not (train.is_file() and val.is_file()):
        return {"skipped": f"{train} or {val} not found"}
    batch, epochs = args.real_batch, args.real_epochs
    out: dict[str, Any] = {
        "data": str(folder),
        "train_rows": sum(1 for _ in train.open()),
        "val_rows": sum(1 for _ in val.open()),
        "batch_size": batch,
        "epochs": epochs,
        "note": "AUC only: ~100 train rows, ~100 val rows (AUC std ~0.06); it checks that "
        "both pipelines read real Criteo lines and learn, not model quality or speed",
    }
    for model in models:
        log(f"[real sample {model}] ours_sync: {epochs} epochs at batch {batch}")
        cfg = make_config(
            model, train, val, batch=batch, mode="sync", workers=1, threads=args.threads
        )
        trainer = CtrTrainer(cfg, tmp / f"run_real_{model}")
        try:
            for epoch in range(epochs):
                trainer.train_pass(str(train), epoch=epoch)
            auc = {"ours_sync": scored(trainer, val, args.threads)["val_auc"]}
        finally:
            trainer.close()
            del trainer
            gc.collect()
        if python is not None:
            log(f"[real sample {model}] deepctr: {epochs} epochs at batch {batch}")
            peer = run_deepctr(python, model, train, val, args, batch=batch, epochs=epochs)
            auc["deepctr"] = peer["val_auc"]
        out[model] = {"val_auc": auc}
    return out


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    env: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_1m_start": load_now("start"),
    }
    data_dir = args.data_dir or data_cache_dir() / "bench-ctr"
    base = data_dir / f"seed{args.data_seed}"
    train = generated(base / f"train-{args.rows}", args.rows, args.data_seed, sample=0)
    val = generated(base / f"val-{args.val_rows}", args.val_rows, args.data_seed, sample=1)
    python = None
    if "deepctr_b1024" in args.variant_list or not args.no_real:
        python = ensure_venv(args.deepctr_venv, log=log)
        env["peer"] = PEER
    settings: dict[str, Any] = {
        "embed_dim": EMBED_DIM,
        "mlp": list(MLP),
        "dcn_cross_layers": CROSS_LAYERS,
        "optim": f"adam lr {LR} (ours: optim + sparse_optim adam)",
        "epochs": 1,
        "ours_hash_size_per_slot": HASH_SIZE,
        "timing": {
            "ours_sync_bN": "CtrTrainer.train_pass (TSV parsing in the prefetch thread included)",
            "ours_sync_bN_preparsed": "loop of stepper.step over batches parsed beforehand",
            "ours_async_Nw": "train_pass after a warm-up pass over an empty file (pool spawned:"
            " startup_s); batch 4096 per worker, threads split over workers",
            "deepctr_b1024": "model.fit only (pandas + LabelEncoder preprocessing excluded)",
        },
        "train": str(train),
        "val": str(val),
    }
    if "deepctr_b1024" in args.variant_list:
        settings["deepctr_table_rows"] = deepctr_table_rows([train, val])
    out: dict[str, Any] = {
        "benchmark": "ctr",
        "rows": args.rows,
        "val_rows": args.val_rows,
        "threads": args.threads,
        "bayes_auc": round(bayes_auc(val.parent), 4),
    }
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-ctr-") as td:
        tmp = Path(td)
        for model in args.model_list:
            log(f"== {model} on {args.rows} rows (val {args.val_rows}) ==")
            out[model] = bench_model(model, train, val, args, tmp, python)
        if args.no_real:
            out["real_sample"] = {"skipped": "--no-real"}
        else:
            log("== real sample ==")
            out["real_sample"] = bench_real(args.real_sample, args.model_list, args, tmp, python)
    env["loadavg_1m_end"] = load_now("end")
    out.update(env=env, settings=settings, wall_s=round(time.perf_counter() - started, 1))
    emit(out, args.out)


if __name__ == "__main__":
    main()
