"""What the text benchmark scripts share: progress on stderr, the load warning, the CPU model
and math flags each JSON line records (figures only compare within one run on one machine).
Standard library only, so the scripts run from a plain checkout (``PYTHONPATH=src``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# The flags that decide fp32 / bf16 / int8 speed: int8 GEMMs use VNNI or AMX when present.
MATH_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_now(when: str) -> float:
    """The 1-minute load average, with a warning when other work shares the cores."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        log(f"warning ({when}): 1-min load average {load:.1f} on {cpus} CPUs; results are noisy")
    return round(load, 2)


def cpu_flags() -> list[str]:
    """The CPU's flags among :data:`MATH_FLAGS` (from /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                have = set(value.split())
                return [f for f in MATH_FLAGS if f in have]
    except OSError:
        pass
    return []


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


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The benchmark's one JSON line on stdout, and in ``out`` when given."""
    line = json.dumps(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line, flush=True)
