"""What the quality benchmark's kits share: the machine record, running our CLI at a wall-time
budget, running a peer script in its venv, and the one JSON line per kit and data set.

Equal budgets: each side trains for ``--minutes`` of wall time. Our CLI takes
``train.time_budget`` when ``TrainConfig`` has that key; otherwise a short calibration run
(``train.max_steps``) measures our samples/s and the real run gets the step count that fills
the budget, so its schedule ends where the budget does. Calibration time is reported
apart and not counted. Evaluation (prediction + metric) is timed on top of training.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(HERE.parent))
from _bench_common import cpu_flags, cpu_model, load_now, log  # noqa: E402

__all__ = [
    "REPO",
    "SHARED_DATA",
    "Budget",
    "e2ekit",
    "log",
    "machine",
    "result_line",
    "run_ours",
    "run_peer",
]

RATE = re.compile(r"([0-9.]+) samples/s")


class Budget:
    """Wall-time budget of one side on one data set, and the threads both sides get."""

    def __init__(self, minutes: float, threads: int, sizing: str = "auto") -> None:
        self.seconds = minutes * 60.0
        self.threads = threads
        self.sizing = sizing  # auto | time_budget | calibrate: how our run is fitted

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        return env


def machine(threads: int) -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": threads,
        "torch": torch.__version__,
        "load_1min": load_now("start"),
    }


def e2ekit() -> list[str]:
    return [sys.executable, "-m", "e2ekit"]


def _run_logged(cmd: list[str], log_file: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` (stdout and stderr into ``log_file``); returns its wall seconds."""
    log("  $ " + " ".join(cmd))
    start = time.perf_counter()
    with log_file.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall


def _has_time_budget() -> bool:
    from e2ekit.core.schema import TrainConfig

    return "time_budget" in TrainConfig.model_fields


def run_ours(
    kit: str,
    config: str,
    overrides: list[str],
    out: Path,
    budget: Budget,
    batch_size: int,
    calib_steps: int,
    fixed: bool = False,
) -> dict[str, Any]:
    """Train ours for the budget (``fixed``: as the config and overrides say); returns the
    command, train seconds and how the run length was chosen."""
    out.mkdir(parents=True, exist_ok=True)
    base = [*e2ekit(), kit, "train", "-c", config]
    for o in overrides:
        base += ["-o", o]
    info: dict[str, Any] = {}
    sizing = budget.sizing
    if sizing == "auto":
        sizing = "time_budget" if _has_time_budget() else "calibrate"
    if fixed:
        length = []
        info["sized_by"] = "config"
    elif sizing == "time_budget":
        # epochs/max_steps would bound the budgeted run: null them; evaluate only at the end
        length = [
            f"train.time_budget={budget.seconds:.0f}",
            "train.epochs=null",
            "train.max_steps=null",
            "train.eval_interval=1000000000",
            "train.log_interval=5",
        ]
        info["sized_by"] = "train.time_budget"
    else:
        calib = [
            f"train.max_steps={calib_steps}",
            f"train.log_interval={calib_steps}",
            f"train.eval_interval={calib_steps}",
            "train.progress=false",
        ]
        cmd = base + [a for o in calib for a in ("-o", o)] + ["--out", str(out / "calib")]
        log(f"  calibrating ours: {calib_steps} steps")
        calib_wall = _run_logged(cmd, out / "calib.log", budget.env())
        rates = RATE.findall((out / "calib.log").read_text(errors="replace"))
        if not rates:
            raise RuntimeError(f"no samples/s in {out / 'calib.log'}")
        rate = float(rates[-1])
        steps = max(1, int(budget.seconds * rate / batch_size))
        length = [
            f"train.max_steps={steps}",
            f"train.eval_interval={steps}",
            f"train.log_interval={max(1, min(50, steps // 10))}",
        ]
        info.update(
            sized_by="calibration",
            calib_samples_per_s=rate,
            calib_wall_s=round(calib_wall, 1),
            max_steps=steps,
        )
    cmd = base + [a for o in [*length, "train.progress=false"] for a in ("-o", o)]
    cmd += ["--out", str(out / "run")]
    log(f"  training ours ({info['sized_by']})")
    wall = _run_logged(cmd, out / "train.log", budget.env())
    rates = RATE.findall((out / "train.log").read_text(errors="replace"))
    info.update(
        command=" ".join(cmd[2:]),
        train_wall_s=round(wall, 1),
        train_samples_per_s=float(rates[-1]) if rates else None,
        run_dir=str(out / "run"),
    )
    return info


def run_cli(args: list[str], log_file: Path, budget: Budget) -> float:
    """One more e2ekit command (predict, eval); returns its wall seconds."""
    return _run_logged([*e2ekit(), *args], log_file, budget.env())


def run_peer(python: Path, script: str, spec: dict[str, Any], out: Path, budget: Budget) -> dict:
    """Run ``script`` (in this folder) under the peer's interpreter with ``spec``; its last
    stdout line is its JSON result."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    cmd = [str(python), str(HERE / script), str(spec_file)]
    log_file = out / "peer.log"
    log(f"  $ {' '.join(cmd)}")
    start = time.perf_counter()
    with log_file.open("w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=budget.env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"peer failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"peer printed no JSON result: {' '.join(cmd)}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(wall, 1)
    return result


def mean_of(runs: list[dict], metric: str) -> dict:
    """The first run's details, with each number averaged over the seeds and the metric kept
    per seed: one fine-tune's score moves by a few thousandths between seeds, so a single seed
    cannot say which side is ahead."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            # scores (mIoU, acc, AUC, ...) keep 4 decimals, times and rates 1
            timed = key.endswith(("_s", "_per_s")) or key == "steps"
            out[key] = round(sum(vals) / len(vals), 1 if timed else 4)
    out[f"{metric}_per_seed"] = [r[metric] for r in runs]
    return out


def over_seeds(
    where: str,
    peer_name: str,
    metric: str,
    seeds: int,
    ours_once: Callable[[str, int], dict],
    peer_once: Callable[[str, int], dict],
) -> tuple[dict, dict, list[int]]:
    """Each side once per seed (ours first, folders ``ours-S`` / ``peer-S`` when there are
    several), then both averaged with :func:`mean_of`."""
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for seed in range(seeds):
        tag = f"-{seed}" if seeds > 1 else ""
        log(f"{where}: ours, seed {seed}")
        runs["ours"].append(ours_once(f"ours{tag}", seed))
        log(f"{where}: peer {peer_name}, seed {seed}")
        runs["peer"].append(peer_once(f"peer{tag}", seed))
    return mean_of(runs["ours"], metric), mean_of(runs["peer"], metric), list(range(seeds))


def ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return round(ours / peer, 4)


def result_line(
    kit: str, data: str, metric: str, ours: dict, peer: dict, mach: dict, budget: Budget
) -> dict[str, Any]:
    return {
        "bench": "quality",
        "kit": kit,
        "data": data,
        "metric": metric,
        "budget_min_per_side": round(budget.seconds / 60, 3),
        "ours": ours,
        "peer": peer,
        "ratio_ours_over_peer": ratio(ours.get(metric), peer.get(metric)),
        "machine": {**mach, "load_1min_end": load_now("end")},
    }
