"""``python -m reliability``: the whole reliability suite, one table of figures at the end.

Parts (each also runs alone as ``python -m reliability.<part>``):
  untrusted     export folders and checkpoints from elsewhere run no code
  bad_inputs    failing commands: one-line errors, no partial outputs
  fuzz_readers  property-based fuzzing of every data reader
  kills         kill -9 during training, resume, compare; disk full during a save
  servers       schemathesis, loopback load with bombs, backpressure, timeouts

Exit status 1 when any part found a defect; the JSON rows go to ``<work>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reliability.common import Row, format_table

PARTS = ("untrusted", "bad_inputs", "fuzz_readers", "kills", "servers")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few cases per part (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--work", type=Path, help="work folder (default: a fresh temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="e2ekit-reliability-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    for part in args.only:
        print(f"== {part}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"reliability.{part}")
        try:
            part_rows = module.run(work, quick=args.quick)
        except Exception as exc:  # a part that crashes is a finding, not the end of the suite
            part_rows = [Row(part, "-", {"crashed": 1}, ok=False, notes=[repr(exc)[:300]])]
        seconds[part] = round(time.perf_counter() - t0, 1)
        for row in part_rows:
            print(f"   {row.part} {row.target}: {'ok' if row.ok else 'FAIL'}", file=sys.stderr)
        rows.extend(part_rows)
    total = round(time.perf_counter() - t_all, 1)
    with open(work / "results.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.as_json()) + "\n")
    print(format_table(rows))
    for row in rows:
        for note in row.notes:
            print(f"  {row.part}/{row.target}: {note}")
    failed = [r for r in rows if not r.ok]
    print(
        json.dumps(
            {
                "reliability": "FAIL" if failed else "ok",
                "rows": len(rows),
                "failed": len(failed),
                "seconds": total,
                "part_seconds": seconds,
                "quick": args.quick,
                "cpu": cpu_model(),
                "python": platform.python_version(),
            }
        )
    )
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
