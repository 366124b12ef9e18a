"""What every ctr benchmark script shares: progress on stderr, the load warning and the CPU
model that each JSON line records (figures only compare within one run on one CPU)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_now(when: str) -> float:
    """The 1-minute load average, with a warning when other work shares the cores."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        log(f"warning ({when}): 1-min load average {load:.1f} on {cpus} CPUs; results are noisy")
    return round(load, 2)


def cpu_model() -> str:
    """The CPU as lscpu names it ("Model name"); /proc/cpuinfo where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor()
