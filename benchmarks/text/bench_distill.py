"""Distillation: a MiniLM teacher fine-tuned by e2ekit vs its tiny students, on real data.

Why: ``e2ekit text distill`` promises students far faster than the teacher that keep most of
its accuracy, and more of it than the same student trained on the labels alone. This runs
the whole path a user runs (``e2ekit text train`` for the teacher unless ``--teacher`` names
a run, then ``e2ekit text distill``) and reports the table with the ratios that matter:

- ``speedup_b1``: teacher's batch-1 latency / the student's (model call on onnxruntime,
  same harness, same threads); the goal is >= 100x for a bow or cnn student;
- ``lift``: distilled student's dev accuracy - the same student on the labels alone
  (goal >= 0.01);
- ``gap``: teacher's dev accuracy - the distilled student's (goal <= 0.04).

Data: ``--train``/``--dev`` (default: the SST-2 sample in ``../shared/data/text/sst2``, 20k
train and 2k dev rows); ``--zh`` uses ChnSentiCorp (500/50 rows; Chinese on MiniLM with
``cls_zh``'s vocabulary extension), reported without goals.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/text/bench_distill.py            # ~25 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/text/bench_distill.py --zh       # ~6 min
    PYTHONPATH=src .venv/bin/python benchmarks/text/bench_distill.py --teacher runs/text/sst2

Prints one JSON line on stdout (also ``--out FILE``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _bench_env import cpu_flags, cpu_model, emit, load_now, log

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "text"


def run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "e2ekit", *args]
    log("$ e2ekit " + " ".join(args))
    env = {**os.environ, "E2EKIT_NO_PROGRESS": os.environ.get("E2EKIT_NO_PROGRESS", "1")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"e2ekit {args[1]} failed (exit {done.returncode})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zh", action="store_true", help="ChnSentiCorp instead of SST-2")
    p.add_argument("--train", type=Path, help="train TSV (default: the shared sample)")
    p.add_argument("--dev", type=Path, help="dev TSV (default: the shared sample)")
    p.add_argument("--teacher", type=Path, help="an e2ekit text run to use as the teacher")
    p.add_argument("--students", default="bow,cnn,bilstm", help="comma list")
    p.add_argument("--factor", type=int, default=10, help="augmentation factor")
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/bench_distill"), help="run folders")
    p.add_argument("--out", type=Path, help="also write the JSON line to this file")
    a = p.parse_args()

    data = SHARED / ("chnsenticorp" if a.zh else "sst2")
    train = a.train or data / "train.tsv"
    dev = a.dev or data / "dev.tsv"
    if not train.is_file() or not dev.is_file():
        raise SystemExit(f"no data at {train} / {dev}; pass --train and --dev")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = a.work / f"{'zh' if a.zh else 'en'}-{stamp}"
    load0 = load_now("start")
    t0 = time.perf_counter()
    data_args = ["-o", f"data.train={train}", "-o", f"data.dev={dev}", "-o", "data.test=null"]
    teacher = a.teacher
    if teacher is None:
        teacher = work / "teacher"
        base = "cls_zh" if a.zh else "quick"
        epochs = [] if a.zh else ["-o", f"train.epochs={a.teacher_epochs}"]
        run(["text", "train", "-c", base, *data_args, *epochs, "--out", str(teacher)])
    teacher_seconds = round(time.perf_counter() - t0, 1)
    out = work / "distill"
    run(
        [
            "text", "distill", "-c", "distill_cls", *data_args,
            "-o", f"distill.students=[{a.students}]",
            "-o", f"distill.augment.factor={a.factor}",
            "-o", f"distill.student.epochs={a.epochs}",
            "--teacher", str(teacher), "--out", str(out),
        ]
    )  # fmt: skip
    result = json.loads((out / "distill.json").read_text())
    rows = result["models"]
    teacher_row = rows[0]
    students: dict[str, dict] = {}
    for row in rows[1:]:
        entry = students.setdefault(row["model"], {})
        entry[row["trained_on"]] = row
    summary = {}
    for kind, pair in students.items():
        distilled, labels = pair.get("distilled"), pair.get("labels")
        if distilled is None:
            continue
        summary[kind] = {
            "accuracy": round(distilled["accuracy"], 4),
            "labels_only_accuracy": round(labels["accuracy"], 4) if labels else None,
            "lift": round(distilled["accuracy"] - labels["accuracy"], 4) if labels else None,
            "gap": round(teacher_row["accuracy"] - distilled["accuracy"], 4),
            "speedup_b1": distilled["speedup_b1"],
            "throughput_b64_ratio": round(
                distilled["throughput_b64"] / teacher_row["throughput_b64"], 1
            ),
            "params": distilled["params"],
        }
    fast = [s for k, s in summary.items() if k in ("bow", "cnn")]
    goals = None
    if not a.zh:
        goals = {
            "speedup_b1_ge_100": any(s["speedup_b1"] >= 100 for s in fast),
            "lift_ge_0.01": any((s["lift"] or 0) >= 0.01 for s in fast),
            "gap_le_0.04": any(s["gap"] <= 0.04 for s in fast),
            "one_student_meets_all": any(
                s["speedup_b1"] >= 100 and (s["lift"] or 0) >= 0.01 and s["gap"] <= 0.04
                for s in fast
            ),
        }
    emit(
        {
            "bench": "text_distill",
            "data": "chnsenticorp" if a.zh else "sst2",
            "train": str(train),
            "dev": str(dev),
            "dev_rows": result["dev_rows"],
            "transfer_rows": result["transfer_rows"],
            "teacher": {
                "run": str(teacher),
                "accuracy": round(teacher_row["accuracy"], 4),
                "latency_ms_b1": teacher_row["latency_ms_b1"],
                "throughput_b64": teacher_row["throughput_b64"],
                "params": teacher_row["params"],
                "train_seconds": teacher_seconds if a.teacher is None else None,
            },
            "students": summary,
            "goals": goals,
            "table": rows,
            "distill_seconds": result["seconds"],
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "threads": os.cpu_count(),
            "load_start": load0,
            "load_end": load_now("end"),
        },
        a.out,
    )


if __name__ == "__main__":
    main()
