"""CTR: ours (``e2ekit ctr train``, config from ``--ctr-config``) vs DeepCTR-Torch 0.3 DeepFM
on generated Criteo-format data that is not the kit's built-in set (another seed of the
hidden click world, a rarer click rate and a planted pairwise interaction); both sides make
``--ctr-epochs`` passes over the same train rows. Test AUC from both sides' probabilities,
computed here with scikit-learn; training samples/s of each side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import Budget, log, result_line, run_cli, run_ours, run_peer

DATASETS = ("criteo_gen",)
SEED = 20261204


def prepare(work: Path, train_rows: int, test_rows: int) -> dict[str, Any]:
    from e2ekit.ctr.data.synthetic import Interaction, write_synthetic_criteo

    # slots C4 x C9 (0-based 3, 8): a cross that none of the kit's configs was tuned on
    inter = Interaction(slot_a=3, slot_b=8, scale=1.0)
    out = {}
    for split, rows, sample in (("train", train_rows, 0), ("test", test_rows, 1)):
        folder = work / split
        if not (folder / "labels.npy").is_file():
            log(f"  generating {rows} {split} rows (seed {SEED}, sample {sample})")
            write_synthetic_criteo(
                folder, rows=rows, seed=SEED, ctr=0.06, sample=sample, interaction=inter
            )
        out[split] = folder / "part-0.tsv"
    out["labels"] = np.load(work / "test" / "labels.npy")
    from e2ekit.ctr.data.synthetic import bayes_auc

    out["bayes_auc"] = round(float(bayes_auc(work / "test")), 4)
    return out


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(labels) != len(probs):
        raise RuntimeError(f"{len(probs)} predictions for {len(labels)} test rows")
    return round(float(roc_auc_score(labels, probs)), 4)


def run(name: str, work: Path, budget: Budget, peer_py: Path, mach: dict, args: Any) -> dict:
    log(f"ctr/{name}: preparing data")
    d = prepare(work / "data", args.ctr_train_rows, args.ctr_test_rows)
    overrides = [
        f"data.train={d['train']}",
        f"data.val={d['test']}",
        "data.test=null",
        "data.format=criteo",
        f"train.epochs={args.ctr_epochs}",
        "train.max_steps=null",
    ]
    log(f"ctr/{name}: ours ({args.ctr_config})")
    ours = run_ours("ctr", args.ctr_config, overrides, work / "ours", budget, 0, 0, fixed=True)
    pred_dir = work / "ours" / "pred"
    t = run_cli(
        [
            "ctr",
            "predict",
            "--weights",
            ours["run_dir"],
            "--input",
            str(d["test"]),
            "--out",
            str(pred_dir),
            "--threads",
            str(budget.threads),
        ],
        work / "ours" / "predict.log",
        budget,
    )
    probs = np.loadtxt(pred_dir / "predictions.tsv", skiprows=1, usecols=0, ndmin=1)
    ours["auc"] = auc(d["labels"], probs)
    ours["eval_wall_s"] = round(t, 1)
    ours["wall_s"] = round(ours["train_wall_s"] + ours["eval_wall_s"], 1)

    log(f"ctr/{name}: peer DeepCTR-Torch DeepFM")
    spec = {
        "train": str(d["train"]),
        "test": str(d["test"]),
        "epochs": args.ctr_epochs,
        "threads": budget.threads,
        "pred_file": str(work / "peer" / "pred.txt"),
    }
    peer = run_peer(peer_py, "_peer_ctr.py", spec, work / "peer", budget)
    t0 = time.perf_counter()
    peer["auc"] = auc(d["labels"], np.loadtxt(work / "peer" / "pred.txt", ndmin=1))
    peer["eval_wall_s"] = round(peer["predict_wall_s"] + time.perf_counter() - t0, 1)
    peer["wall_s"] = round(peer["train_wall_s"] + peer["eval_wall_s"], 1)
    line = result_line("ctr", name, "auc", ours, peer, mach, budget)
    line["bayes_auc"] = d["bayes_auc"]
    line["train_rows"], line["test_rows"] = args.ctr_train_rows, args.ctr_test_rows
    sps = (ours.get("train_samples_per_s"), peer.get("train_samples_per_s"))
    line["ratio_samples_per_s_ours_over_peer"] = (
        round(sps[0] / sps[1], 4) if sps[0] and sps[1] else None
    )
    return line
