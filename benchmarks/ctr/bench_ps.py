"""CTR training on the Ray parameter server (``train.mode: ps``) vs Hogwild and sync.

Why: ps mode moves the table and the dense weights into server actors and every step pulls
rows and pushes gradients over Ray, where Hogwild workers write shared memory in place. This
measures, in one run, on the same generated data and thread budget, what that costs in
training rows/s and whether the model learns as much (validation AUC):

- ``sync``: one process, ``--threads`` threads (the AUC reference);
- ``hogwild_2w``: ``train.mode=async``, 2 worker processes, the threads split over them;
- ``ps_1w`` / ``ps_2w``: ``train.mode=ps``, ``--servers`` row shards + a dense server, 1 or 2
  worker actors, the threads split over the workers (servers run one thread each).

Each variant trains a fresh model (same seed) for one epoch of ``--rows`` rows and is scored
on ``--val-rows`` rows of an independent draw of the same click model. Start-up (the Hogwild
processes, the Ray actors; Ray itself is started once, ``ray_init_s``) is timed apart
(``startup_s``) and not in the rates: the timed pass is the steady state, parsing included.
Ratios: ``ps2_vs_hogwild``, ``ps1_vs_hogwild``, ``ps2_vs_ps1`` (rows/s) and
``auc_ps2_minus_sync``, ``auc_ps2_minus_hogwild``.

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.synthetic import bayes_auc, write_synthetic_criteo
from e2ekit.ctr.engine.fit import CtrTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_env import cpu_model, emit, load_now, log

VARIANTS = ("sync", "hogwild_2w", "ps_1w", "ps_2w")
SEED = 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=600_000, help="training rows")
    p.add_argument("--val-rows", type=int, default=100_000)
    p.add_argument("--hash-size", type=int, default=2**16, help="buckets per slot")
    p.add_argument("--batch", type=int, default=4096, help="batch per worker")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every variant")
    p.add_argument("--servers", type=int, default=2, help="ps row shards")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="default: a temp folder")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    return p.parse_args()


def make_config(args: argparse.Namespace, variant: str, train: Path, val: Path) -> CtrConfig:
    workers = 2 if variant.endswith("_2w") else 1
    mode = {"sync": "sync", "hogwild": "async", "ps": "ps"}[variant.split("_")[0]]
    return CtrConfig.model_validate(
        {
            "seed": SEED,
            "device": "cpu",
            "model": {
                "type": "deepfm",
                "hash_size": args.hash_size,
                "embed_dim": 8,
                "mlp_dims": [256, 128],
            },
            "data": {"train": str(train), "val": str(val), "format": "criteo"},
            "train": {
                "mode": mode,
                "workers": workers,
                "threads": max(1, args.threads // workers),
                "batch_size": args.batch,
                "amp": "off",
                "epochs": 1,
                "progress": False,
                "tensorboard": False,
            },
            "optim": {"type": "adam", "lr": 1e-3},
            "sparse_optim": {"type": "adam", "lr": 1e-3},
            "ps": {"servers": args.servers, "workers": workers, "unit_mb": 8},
        }
    )


def run_variant(
    args: argparse.Namespace, variant: str, train: Path, val: Path, tmp: Path
) -> dict[str, Any]:
    cfg = make_config(args, variant, train, val)
    trainer = CtrTrainer(cfg, tmp / f"run_{variant}")  # train_pass never creates the folder
    out: dict[str, Any] = {
        "mode": cfg.train.mode,
        "workers": cfg.train.workers,
        "threads_per_worker": cfg.train.threads,
        "loadavg_1m_before": load_now(variant),
    }
    try:
        if cfg.train.mode != "sync":
            t0 = time.perf_counter()
            trainer.start_pool()
            out["startup_s"] = round(time.perf_counter() - t0, 3)
        stats = trainer.train_pass(str(train), epoch=0)
        rows, seconds = int(stats["rows"]), float(stats["seconds"])
        out.update(rows=rows, train_seconds=round(seconds, 3))
        out["train_rows_s"] = round(rows / max(seconds, 1e-9), 1)
        if cfg.train.mode == "ps":
            out.update(
                units=stats["units"], held_rows=stats["held_rows"], restarts=stats["restarts"]
            )
        out["loadavg_1m_after"] = load_now(variant)
        torch.set_num_threads(args.threads)  # evaluation is untimed
        metrics = trainer.evaluate_paths(str(val))
        out.update(val_auc=metrics["auc"], val_logloss=metrics["logloss"])
    finally:
        trainer.close()
        del trainer
        gc.collect()
    return out


def ray_version() -> str:
    import ray

    return ray.__version__


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    args = parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ps-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data_dir or tmp / "data"
        train, val = data / "train", data / "val"
        if not (train / "part-0.tsv").is_file():
            log(f"generating {args.rows} train + {args.val_rows} val rows into {data}")
            write_synthetic_criteo(train, rows=args.rows, seed=args.data_seed, sample=0)
            write_synthetic_criteo(val, rows=args.val_rows, seed=args.data_seed, sample=1)
        runs: dict[str, Any] = {}
        ray_init_s = None
        if any(v.startswith("ps") for v in variants):
            from e2ekit.ctr.ps.pool import connect

            t0 = time.perf_counter()
            connect(None, 2)
            ray_init_s = round(time.perf_counter() - t0, 3)
        try:
            for variant in variants:
                log(f"{variant} ...")
                runs[variant] = run_variant(args, variant, train / "part-0.tsv", val, tmp)
                log(f"{variant}: {runs[variant]}")
        finally:
            if ray_init_s is not None:
                import ray

                ray.shutdown()
        ceiling = bayes_auc(val)
    rate = {v: r.get("train_rows_s") for v, r in runs.items()}
    auc = {v: r.get("val_auc") for v, r in runs.items()}

    def diff(a: str, b: str) -> float | None:
        return round(auc[a] - auc[b], 4) if a in auc and b in auc else None

    emit(
        {
            "bench": "ctr_ps",
            "train_rows_s": rate,
            "val_auc": auc,
            "bayes_auc": ceiling,
            "ratios": {
                "ps2_vs_hogwild": ratio(rate.get("ps_2w"), rate.get("hogwild_2w")),
                "ps1_vs_hogwild": ratio(rate.get("ps_1w"), rate.get("hogwild_2w")),
                "ps2_vs_ps1": ratio(rate.get("ps_2w"), rate.get("ps_1w")),
                "auc_ps2_minus_sync": diff("ps_2w", "sync"),
                "auc_ps2_minus_hogwild": diff("ps_2w", "hogwild_2w"),
            },
            "runs": runs,
            "ray_init_s": ray_init_s,
            "settings": {
                "rows": args.rows,
                "val_rows": args.val_rows,
                "hash_size": args.hash_size,
                "batch_per_worker": args.batch,
                "threads": args.threads,
                "servers": args.servers,
                "model": "deepfm embed 8, mlp 256-128, adam 1e-3 (dense and rows)",
            },
            "env": {
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "ray": ray_version(),
            },
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
