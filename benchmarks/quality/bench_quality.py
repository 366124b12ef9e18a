"""Model quality at equal wall time: ours vs the tool a user would otherwise pick.

One JSON line per kit and data set on stdout (progress on stderr): for each side the metric,
wall time (train + eval), the command or config used, and the ratio ours/peer, plus the CPU
model and math flags, thread count and torch version. The two sides run one after the
other, never at once. See README.md beside this file.

    python benchmarks/quality/bench_quality.py --kits seg,text,det,ctr --minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Budget, log, machine
from _peer_env import ensure_venv

KITS = ("seg", "text", "det", "ctr")


def _datasets(kit: str) -> tuple[str, ...]:
    if kit == "seg":
        from _seg import DATASETS
    elif kit == "text":
        from _text import DATASETS
    elif kit == "det":
        from _det import DATASETS
    else:
        from _ctr import DATASETS
    return DATASETS


def _peer_python(kit: str) -> Path:
    if kit == "ctr":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ctr"))
        from _deepctr_env import ensure_venv as ensure_deepctr

        return ensure_deepctr(log=log)
    return ensure_venv({"seg": "smp", "text": "hf", "det": "ultralytics"}[kit], log=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kits", default=",".join(KITS), help="comma-separated: seg,text,det,ctr")
    ap.add_argument("--data", default="", help="comma-separated data set names (default: all)")
    ap.add_argument("--minutes", type=float, default=1.0, help="training budget per side and set")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per side")
    ap.add_argument("--out", type=Path, default=None, help="folder for runs and results.jsonl")
    ap.add_argument("--seg-config", default="configs/seg/quick.yaml")
    ap.add_argument("--text-config", default="configs/text/quick.yaml")
    ap.add_argument("--det-config", default="configs/det/ppyoloe_tiny_shapes.yaml")
    ap.add_argument("--ctr-config", default="configs/ctr/quick.yaml")
    ap.add_argument(
        "--det-score-thresh",
        type=lambda v: None if v == "none" else float(v),
        default=0.001,
        help="our detector's model.score_thresh ('none': the config's)",
    )
    ap.add_argument("--text-train-rows", type=int, default=4000)
    ap.add_argument("--ctr-train-rows", type=int, default=300_000)
    ap.add_argument("--ctr-test-rows", type=int, default=50_000)
    ap.add_argument(
        "--sizing",
        choices=("auto", "time_budget", "calibrate"),
        default="auto",
        help="how our run fills the budget: train.time_budget (auto: when TrainConfig has it) "
        "or a short calibration run that sizes train.max_steps",
    )
    ap.add_argument("--ctr-epochs", type=int, default=1, help="passes over the ctr train rows")
    ap.add_argument(
        "--ctr-seeds", type=int, default=3, help="ctr runs per side (seeds 0..N-1), AUC averaged"
    )
    ap.add_argument(
        "--seg-seeds",
        type=int,
        default=1,
        help="seg runs per side (seeds 0..N-1), mIoU averaged; for sets with a handful of "
        "test images (camvid_mini: 3), where one run's mIoU moves by hundredths",
    )
    ap.add_argument(
        "--text-seeds",
        type=int,
        default=1,
        help="text runs per side (seeds 0..N-1), accuracy averaged; 3 to separate sides "
        "closer than one fine-tune's seed-to-seed spread",
    )
    ap.add_argument("--keep", action="store_true", help="keep the runs when --out is not given")
    args = ap.parse_args(argv)

    kits = [k for k in args.kits.split(",") if k]
    for k in kits:
        if k not in KITS:
            ap.error(f"unknown kit {k!r}; choose from {', '.join(KITS)}")
    wanted = {d for d in args.data.split(",") if d}
    known = {d for k in kits for d in _datasets(k)}
    if wanted - known:
        ap.error(f"unknown data {sorted(wanted - known)}; choose from {sorted(known)}")
    # absolute: the kits resolve list files against data.root, which is under out
    out = (args.out or Path(tempfile.mkdtemp(prefix="e2ekit-quality-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.minutes, args.threads, args.sizing)
    mach = machine(args.threads)
    results = out / "results.jsonl"
    log(f"quality benchmark: {args.minutes} min per side and data set, out {out}")
    start = time.perf_counter()
    failed = 0
    for kit in kits:
        peer_py = _peer_python(kit)
        module = __import__(f"_{kit}")
        for name in _datasets(kit):
            if wanted and name not in wanted:
                continue
            work = out / kit / name
            try:
                line = module.run(name, work, budget, peer_py, mach, args)
            except (RuntimeError, OSError, ValueError) as exc:
                log(f"{kit}/{name} failed: {exc}")
                line = {"bench": "quality", "kit": kit, "data": name, "error": str(exc)[-2000:]}
                failed += 1
            print(json.dumps(line), flush=True)
            with results.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min; lines in {results}")
    if args.out is None and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
