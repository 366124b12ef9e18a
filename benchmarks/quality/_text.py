"""Text: ours (``e2ekit text train -c quick``) vs a plain Hugging Face ``Trainer`` fine-tune of
the same MiniLM on SST-2 (a fixed train subset, the 2000 dev rows); accuracy on dev from both
sides' predicted labels, computed here."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from _common import SHARED_DATA, Budget, log, over_seeds, result_line, run_cli, run_ours, run_peer

DATASETS = ("sst2",)
MAX_LEN = 64
BATCH = 32


def prepare(work: Path, rows: int) -> dict[str, Any]:
    src = SHARED_DATA / "text" / "sst2"
    work.mkdir(parents=True, exist_ok=True)
    lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines()
    head, body = lines[0], [line for line in lines[1:] if line.strip()]
    keep = sorted(random.Random(0).sample(range(len(body)), min(rows, len(body))))
    train = work / "train.tsv"
    train.write_text(head + "\n" + "".join(body[i] + "\n" for i in keep), encoding="utf-8")
    dev_lines = (src / "dev.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in dev_lines[1:] if line.strip()]
    # predict reads text_a headers, JSON or plain lines: the dev sentences as JSON lines
    texts = work / "dev_texts.jsonl"
    texts.write_text("".join(json.dumps({"text": r[0]}) + "\n" for r in rows), encoding="utf-8")
    labels = [int(r[1]) for r in rows]
    return {"train": train, "dev": src / "dev.tsv", "dev_texts": texts, "labels": labels}


def accuracy(pred: list[int], gold: list[int]) -> float:
    if len(pred) != len(gold):
        raise RuntimeError(f"{len(pred)} predictions for {len(gold)} dev rows")
    return round(sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold), 4)


def run(name: str, work: Path, budget: Budget, peer_py: Path, mach: dict, args: Any) -> dict:
    log(f"text/{name}: preparing data ({args.text_train_rows} train rows)")
    d = prepare(work / "data", args.text_train_rows)
    ours, peer, seeds = over_seeds(
        f"text/{name}",
        "Hugging Face Trainer",
        "accuracy",
        args.text_seeds,
        lambda sub, seed: _ours_once(d, work / sub, seed, budget, args),
        lambda sub, seed: _peer_once(d, work / sub, seed, budget, peer_py),
    )
    line = result_line("text", name, "accuracy", ours, peer, mach, budget)
    line["seeds"] = seeds
    return line


def _ours_once(d: dict, out: Path, seed: int, budget: Budget, args: Any) -> dict:
    overrides = [
        f"data.train={d['train']}",
        "data.dev=null",  # scored afterwards from predictions, as the peer is
        "data.test=null",
        f"data.max_seq_len={MAX_LEN}",
        f"train.batch_size={BATCH}",
        f"seed={seed}",
    ]
    ours = run_ours("text", args.text_config, overrides, out, budget, BATCH, 6)
    pred_dir = out / "pred"
    t = run_cli(
        [
            "text",
            "predict",
            "--weights",
            ours["run_dir"],
            "--input",
            str(d["dev_texts"]),
            "--out",
            str(pred_dir),
            "--threads",
            str(budget.threads),
        ],
        out / "predict.log",
        budget,
    )
    rows = [json.loads(x) for x in (pred_dir / "predictions.jsonl").read_text().splitlines()]
    ours["accuracy"] = accuracy([int(r["label"]) for r in rows], d["labels"])
    ours["eval_wall_s"] = round(t, 1)
    ours["wall_s"] = round(ours["train_wall_s"] + ours["eval_wall_s"], 1)
    return ours


def _peer_once(d: dict, out: Path, seed: int, budget: Budget, peer_py: Path) -> dict:
    spec = {
        "train": str(d["train"]),
        "dev": str(d["dev"]),
        "max_len": MAX_LEN,
        "batch_size": BATCH,
        "budget_s": budget.seconds,
        "threads": budget.threads,
        "calib_steps": 20,
        "seed": seed,
        "work": str(out),
        "pred_file": str(out / "pred.txt"),
    }
    peer = run_peer(peer_py, "_peer_text.py", spec, out, budget)
    t0 = time.perf_counter()
    pred = [int(x) for x in (out / "pred.txt").read_text().split()]
    peer["accuracy"] = accuracy(pred, d["labels"])
    peer["eval_wall_s"] = round(peer["predict_wall_s"] + time.perf_counter() - t0, 1)
    peer["wall_s"] = round(peer["train_wall_s"] + peer["eval_wall_s"], 1)
    return peer
