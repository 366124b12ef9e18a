"""Which CTR models recover a planted field-pair interaction, vs LR given the true cross.

Why: on data whose clicks hinge on the value PAIR of two categorical fields, DeepFM, DCN-V2
and Wide&Deep were seen to stop at the same AUC while a logistic regression fed the true cross
reached higher. FwFM (learned field-pair weights) and AutoInt (attention across fields) are
meant to find such pairs unprompted; this measures, in one run on the same data, how much of
that gap each model closes.

Data: ``write_synthetic_criteo`` with an ``Interaction`` on two slots of moderate cardinality
(default C3 x C16, 200 x 457 values, Zipf laws; both unused by the rest of the click model):
``--rows`` train rows and an independent val draw (``sample=1``) of the same hidden world.
``bayes_auc`` is the AUC of the true probabilities on val: the ceiling.

"LR with the true cross" (``lr_cross``): the same files with one column no weight reads
(default C1) rewritten to ``a_value + "_" + b_value`` (empty when either is missing), in train
AND val: the id of the pair, hand-made. Plain ``lr`` sees the original C1 (noise).
``lr+cross`` and ``deepfm+cross``: the original files with the pair declared as a schema cross
(``data.schema: {crosses: [[C3, C16]]}``), what a user of the kit writes: one more field.

Every model: the ctr kit's own trainer (``CtrTrainer.train_pass``, sync), one epoch in file
order, same seed, hash size, embedding dim, MLP, batch, Adam (``optim`` and ``sparse_optim``)
at lr 1e-3 (``bench_ctr.py``'s setting), the two LRs at 0.05 (at 1e-3 one epoch leaves LR at
AUC ~0.5: each table row moves ~lr per visit), then ``evaluate_paths`` on val. Reported per
model: val AUC, logloss, train seconds and the AUC gap to ``lr_cross`` (negative: below it).
Nothing is asserted.

Prints one JSON line on stdout (with the CPU model from lscpu); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("E2EKIT_NO_PROGRESS", "1")

import torch

from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.synthetic import (
    Interaction,
    bayes_auc,
    hidden_world,
    write_synthetic_criteo,
)
from e2ekit.ctr.engine.fit import CtrTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_env import cpu_model, emit, log

MODELS = ("lr", "deepfm", "dcn_v2", "fwfm", "autoint", "lr_cross", "lr+cross", "deepfm+cross")
N_DENSE = 13


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000, help="generated train rows")
    p.add_argument("--val-rows", type=int, default=100_000, help="generated val rows")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma subset of {MODELS}")
    p.add_argument("--slots", default="2,15", help="0-based slots of the planted pair (C3, C16)")
    p.add_argument("--scale", type=float, default=1.5, help="planted term's std on the logit")
    p.add_argument("--cross-slot", type=int, default=0, help="0-based column for lr_cross (C1)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=1024, help="model init seed (every model)")
    p.add_argument("--hash-size", type=int, default=2**17, help="buckets per slot")
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--mlp", default="256,128", help="deepfm / dcn_v2 / autoint MLP widths")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the embedding models")
    p.add_argument("--lr-linear", type=float, default=0.05, help="Adam lr of lr and lr_cross")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = p.parse_args()
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.model_list if m not in MODELS]
    if bad:
        p.error(f"unknown --models {bad}; choose from {MODELS}")
    args.pair = tuple(int(s) for s in args.slots.split(","))
    if len(args.pair) != 2:
        p.error("--slots takes two slot indices")
    return args


def cross_column(src: Path, dst: Path, a: int, b: int, column: int) -> None:
    """``dst``: ``src`` with slot ``column`` replaced by ``C[a] + "_" + C[b]`` (empty when
    either is missing), the id a schema cross of the two slots would hash."""
    ia, ib, ic = 1 + N_DENSE + a, 1 + N_DENSE + b, 1 + N_DENSE + column
    with src.open(encoding="utf-8") as fin, dst.open("w", encoding="utf-8") as fout:
        for line in fin:
            f = line.rstrip("\n").split("\t")
            f[ic] = f"{f[ia]}_{f[ib]}" if f[ia] and f[ib] else ""
            fout.write("\t".join(f) + "\n")


def make_config(
    model: str, train: Path, val: Path, args: argparse.Namespace, cross: bool = False
) -> CtrConfig:
    spec: dict[str, Any] = {"type": model, "hash_size": args.hash_size}
    data: dict[str, Any] = {"train": str(train), "val": str(val), "format": "criteo"}
    if cross:
        data["schema"] = {"crosses": [[f"C{s + 1}" for s in args.pair]]}
    lr = args.lr_linear if model == "lr" else args.lr
    if model != "lr":
        spec["embed_dim"] = args.embed_dim
    if model in ("deepfm", "dcn_v2", "autoint"):
        spec["mlp_dims"] = [int(w) for w in args.mlp.split(",") if w]
    return CtrConfig.model_validate(
        {
            "seed": args.seed,
            "device": "cpu",
            "model": spec,
            "data": data,
            "train": {
                "mode": "sync",
                "threads": args.threads,
                "batch_size": args.batch,
                "epochs": 1,
                "progress": False,
                "tensorboard": False,
            },
            "optim": {"type": "adam", "lr": lr},
            "sparse_optim": {"type": "adam", "lr": lr},
        }
    )


def run_model(
    name: str, train: Path, val: Path, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    model = "lr" if name == "lr_cross" else name.removesuffix("+cross")
    cfg = make_config(model, train, val, args, cross=name.endswith("+cross"))
    trainer = CtrTrainer(cfg, tmp / f"run_{name}")  # the folder is never created
    try:
        params = sum(p.numel() for p in trainer.model.dense_parameters())
        stats = trainer.train_pass(str(train), epoch=0)
        metrics = trainer.evaluate_paths(str(val))
    finally:
        trainer.close()
        del trainer
        gc.collect()
    return {
        "val_auc": round(float(metrics["auc"]), 4),
        "val_logloss": round(float(metrics["logloss"]), 4),
        "train_seconds": round(float(stats["seconds"]), 1),
        "dense_params": params,
    }


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    world = hidden_world(args.data_seed)
    a, b = args.pair
    used = set(world["weighted_slots"]) | {s for c in world["crosses"] for s in c} | {a, b}
    if args.cross_slot in used:
        raise SystemExit(f"--cross-slot {args.cross_slot} is read by the click model: pick another")
    planted = Interaction(a, b, args.scale)
    out: dict[str, Any] = {
        "benchmark": "ctr_interaction",
        "rows": args.rows,
        "val_rows": args.val_rows,
        "planted": {
            "slots": [f"C{a + 1}", f"C{b + 1}"],
            "cardinality": [world["cardinality"][a], world["cardinality"][b]],
            "scale": args.scale,
            "cross_column": f"C{args.cross_slot + 1}",
        },
    }
    with tempfile.TemporaryDirectory(prefix="e2ekit-bench-interaction-") as td:
        tmp = Path(td)
        t0 = time.perf_counter()
        log(f"generating {args.rows} train + {args.val_rows} val rows, planted C{a + 1} x C{b + 1}")
        tr = write_synthetic_criteo(
            tmp / "train", rows=args.rows, seed=args.data_seed, interaction=planted
        )
        va = write_synthetic_criteo(
            tmp / "val", rows=args.val_rows, seed=args.data_seed, sample=1, interaction=planted
        )
        plain = write_synthetic_criteo(
            tmp / "val_plain", rows=args.val_rows, seed=args.data_seed, sample=1
        )
        out["bayes_auc"] = round(bayes_auc(tmp / "val"), 4)
        out["bayes_auc_without_planted"] = round(bayes_auc(tmp / "val_plain"), 4)
        out["ctr"] = round(tr.ctr, 4)
        shutil.rmtree(tmp / "val_plain")
        del plain
        crossed = {}
        for split, info in (("train", tr), ("val", va)):
            dst = tmp / f"{split}_cross.tsv"
            cross_column(info.files[0], dst, a, b, args.cross_slot)
            crossed[split] = dst
        out["data_seconds"] = round(time.perf_counter() - t0, 1)
        results: dict[str, dict[str, Any]] = {}
        for name in args.model_list:
            log(f"[{name}] training one epoch")
            if name == "lr_cross":
                files = (crossed["train"], crossed["val"])
            else:
                files = (tr.files[0], va.files[0])
            results[name] = run_model(name, *files, args, tmp)
            r = results[name]
            log(f"[{name}] val AUC {r['val_auc']:.4f}, logloss {r['val_logloss']:.4f}")
    ref = results.get("lr_cross", {}).get("val_auc")
    out["val_auc"] = {k: r["val_auc"] for k, r in results.items()}
    out["val_logloss"] = {k: r["val_logloss"] for k, r in results.items()}
    out["auc_gap_vs_lr_cross"] = {
        k: (round(r["val_auc"] - ref, 4) if ref is not None else None)
        for k, r in results.items()
        if k != "lr_cross"
    }
    out["auc_gap_vs_bayes"] = {
        k: round(r["val_auc"] - out["bayes_auc"], 4) for k, r in results.items()
    }
    out["runs"] = results
    out["settings"] = {
        "hash_size_per_slot": args.hash_size,
        "embed_dim": args.embed_dim,
        "mlp": args.mlp,
        "batch_size": args.batch,
        "optim": f"adam (optim + sparse_optim), lr {args.lr}; lr / lr_cross: {args.lr_linear}",
        "epochs": 1,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "model_defaults": "dcn_v2: 3 stacked cross layers; autoint: 3 layers, 2 heads x 8, "
        "AutoInt+ (MLP in parallel); fwfm: 39x39 field-pair weights",
    }
    out["env"] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    out["wall_s"] = round(time.perf_counter() - started, 1)
    emit(out, args.out)


if __name__ == "__main__":
    main()
