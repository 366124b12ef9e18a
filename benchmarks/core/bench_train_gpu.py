"""Training throughput: e2ekit's Trainer vs a plain PyTorch loop, on the GPU.

Why: every kit trains through ``e2ekit.core.engine.Trainer`` (resumable sampler, loss
window kept on the device, AMP and scaler, hooks, run bookkeeping). That should cost next
to nothing against the loop a user would write by hand: goal ours/plain >= 0.97.

Method: per workload, both loops train the same model (the kit's registry / model builder,
same seed) on the same in-memory fixed random dataset (the kit's sample format and collate
function, one process, no workers), at the same batch size, AMP dtype and optimizer
(AdamW). Ours is ``Trainer(task, out_dir).fit()`` on the kit's Task whose ``build_dataset``
returns that dataset; a Hook times it. Plain is a for loop over a DataLoader: autocast,
``loss = sum(model(batch).values())``, backward, optimizer step, zero_grad. Both are timed
from the end of ``--warmup`` steps to the end of ``--steps`` more, after
``torch.cuda.synchronize()`` at both points, so only steady-state steps count. The runs
alternate in order, ours-plain then plain-ours (A B B A ...), for ``--rounds`` rounds,
because the first run on a GPU is faster or slower just from its place; samples/s is the
median run and the ratio the median of the per-round ratios.

FLOPs of one training step (forward + backward) come from
``torch.utils.flop_counter.FlopCounterMode``; model FLOP/s is reported as a share of the
bf16 dense peak (``--peak-tflops``, 790 by default). Prints one JSON line on stdout;
progress goes to stderr. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _alternate import load_warning, log, median
from _train_workloads import (
    DATASET_SIZE,
    WORKLOADS,
    FixedSamples,
    Workload,
    build_config,
    det_workload,
    make_task,
    seg_workload,
    text_workload,
    write_bert_dir,
)
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from e2ekit.core.engine import Trainer
from e2ekit.core.engine.hooks import Hook
from e2ekit.core.engine.task import Task


class StopTiming(Exception):
    """Raised by the timing hook after the last timed step: the run ends there, before the
    final evaluation and checkpoint (not part of the steady state being measured)."""


class StepTimer(Hook):
    """Wall time from the end of step ``warmup`` to the end of step ``warmup + steps``."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.start = self.end = 0.0

    def after_step(self, trainer: Any) -> None:
        if trainer.step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        elif trainer.step == self.warmup + self.steps:
            sync(self.device)
            self.end = time.perf_counter()
            raise StopTiming


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def amp_dtype(amp: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def run_ours(task: Task, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds of ``steps`` steady-state steps of ``Trainer.fit()``."""
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        trainer = Trainer(task, out / "run")
        timer = StepTimer(device, warmup, steps)
        trainer.hooks.append(timer)
        with contextlib.suppress(StopTiming):
            trainer.fit()
        del trainer
        if not timer.end:
            raise RuntimeError("the Trainer stopped before the last timed step")
        return timer.end - timer.start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_plain(task: Task, device: torch.device, amp: str, warmup: int, steps: int) -> float:
    """Seconds of ``steps`` steady-state steps of the hand-written loop."""
    cfg = task.cfg
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    dtype = amp_dtype(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loader = DataLoader(
        task.build_dataset("train"),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=task.collate_fn("train"),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    step, start = 0, 0.0
    while True:
        for batch in loader:
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(model(batch).values())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == warmup:
                sync(device)
                start = time.perf_counter()
            elif step == warmup + steps:
                sync(device)
                return time.perf_counter() - start


def step_flops(task: Task, device: torch.device, amp: str) -> tuple[int, float]:
    """FLOPs of one training step (forward + backward) at the configured batch, and the
    model's parameter count in millions."""
    torch.manual_seed(task.cfg.seed)
    model = task.build_model().to(device)
    model.train()
    loader = DataLoader(
        task.build_dataset("train"),
        batch_size=task.cfg.train.batch_size,
        collate_fn=task.collate_fn("train"),
    )
    batch = to_device(next(iter(loader)), device)
    dtype = amp_dtype(amp)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(batch).values())
        loss.backward()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return int(counter.get_total_flops()), round(params, 2)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_workload(
    w: Workload, device: torch.device, amp: str, warmup: int, steps: int, args: Any
) -> dict[str, Any]:
    data = FixedSamples(w.sample, DATASET_SIZE)
    cfg = build_config(w, device.type, amp, warmup + steps)
    task = make_task(w, cfg, data)
    flops, params = step_flops(task, device, amp)
    free_memory()
    log(f"{w.kit} {w.model} {w.input} batch {w.batch}: {params}M params, "
        f"{flops / 1e9:.1f} GFLOP per step; {warmup} warm-up + {steps} timed steps")  # fmt: skip
    runs: dict[str, Callable[[], float]] = {
        "ours": lambda: run_ours(make_task(w, cfg, data), device, warmup, steps),
        "plain": lambda: run_plain(make_task(w, cfg, data), device, amp, warmup, steps),
    }
    rounds = []
    for r in range(args.rounds):
        order = ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]
        rate = {}
        for name in order:
            seconds = runs[name]()
            free_memory()
            rate[name] = steps * w.batch / seconds
        ratio = rate["ours"] / rate["plain"]
        rounds.append(
            {"order": order, **{k: round(v, 2) for k, v in rate.items()}, "ratio": round(ratio, 4)}
        )
        log(f"  round {r + 1} ({'-'.join(order)}): ours {rate['ours']:.1f} samples/s, "
            f"plain {rate['plain']:.1f}, ratio {ratio:.3f}")  # fmt: skip
    ours = median([x["ours"] for x in rounds])
    plain = median([x["plain"] for x in rounds])
    peak = args.peak_tflops * 1e12

    def tflops(samples_per_s: float) -> float:
        return flops * samples_per_s / w.batch / 1e12

    return {
        "model": w.model,
        "input": w.input,
        "batch": w.batch,
        "params_m": params,
        "flops_per_step": flops,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "ours_samples_per_s": round(ours, 2),
        "plain_samples_per_s": round(plain, 2),
        "ratio": round(median([x["ratio"] for x in rounds]), 4),
        "ours_tflops": round(tflops(ours), 3),
        "plain_tflops": round(tflops(plain), 3),
        "ours_peak_share": round(tflops(ours) * 1e12 / peak, 4),
        "plain_peak_share": round(tflops(plain) * 1e12 / peak, 4),
        "rounds": rounds,
    }


def cpu_info() -> dict[str, Any]:
    """CPU model and flags as lscpu reports them (/proc/cpuinfo where lscpu is missing)."""
    fields: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if "Model name" not in fields:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                key = {"model name": "Model name", "flags": "Flags"}.get(key.strip(), "")
                if key and key not in fields:
                    fields[key] = value.strip()
        except OSError:
            pass
    return {
        "model": fields.get("Model name") or platform.processor(),
        "cores": fields.get("CPU(s)"),
        "flags": fields.get("Flags", ""),
    }


def gpu_info(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def per_workload(text: str, names: list[str], option: str) -> dict[str, int]:
    """``30`` (every workload) or ``seg=20,det=30,text=40``."""
    if "=" not in text:
        return dict.fromkeys(names, int(text))
    values: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        values[name.strip()] = int(value)
    missing = [n for n in names if n not in values]
    if missing:
        raise SystemExit(f"{option} {text}: no count for {', '.join(missing)}")
    return values


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="default: cuda if available, else cpu with --small",
    )
    p.add_argument("--small", action="store_true", help="tiny sizes (runs on a CPU in minutes)")
    p.add_argument("--steps", default="30", help="timed steps: N, or seg=N,det=N,text=N")
    p.add_argument("--warmup", default="10", help="untimed steps first: N, or seg=N,...")
    p.add_argument("--rounds", type=int, default=3, help="ours/plain pairs, order alternating")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default="bf16")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak of the GPU")
    p.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu" and not args.small:
            log("no CUDA device: running on the CPU with --small sizes")
            args.small = True
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    if args.device == "cpu" and args.amp == "fp16":
        # the Trainer would train in bf16 there: the loops would not compare like for like
        raise SystemExit("--amp fp16 needs CUDA; on the CPU use --amp bf16 or off")
    return args


def main() -> None:
    args = parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"--workloads: unknown {unknown}; choose from {list(WORKLOADS)}")
    steps = per_workload(args.steps, names, "--steps")
    warmup = per_workload(args.warmup, names, "--warmup")
    if min(steps.values()) < 1 or min(warmup.values()) < 1:
        raise SystemExit("--steps and --warmup: at least 1 step each")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the Trainer sets it
    result: dict[str, Any] = {
        "bench": "train_gpu",
        "device": device.type,
        "small": args.small,
        "amp": args.amp,
        "rounds": args.rounds,
        "peak_tflops": args.peak_tflops,
        "gpu": gpu_info(device),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m_start": load_warning("start"),
        "complete": False,
        "workloads": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-bert-") as tmp:
        bert = write_bert_dir(Path(tmp) / "bert")
        build = {
            "seg": lambda: seg_workload(args.small),
            "det": lambda: det_workload(args.small),
            "text": lambda: text_workload(args.small, bert),
        }
        for name in names:
            w = build[name]()
            result["workloads"][name] = bench_workload(
                w, device, args.amp, warmup[name], steps[name], args
            )
            free_memory()
            result["seconds"] = round(time.perf_counter() - t0, 1)
            write_out(args.out, result)  # a run cut short by a time limit keeps what it did
    result.update(complete=True, loadavg_1m_end=load_warning("end"))
    line = write_out(args.out, result)
    print(line, flush=True)


def write_out(path: str | None, result: dict[str, Any]) -> str:
    line = json.dumps(result)
    if path:
        Path(path).write_text(line + "\n")
    return line


if __name__ == "__main__":
    main()
