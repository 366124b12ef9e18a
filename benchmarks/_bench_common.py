"""What every benchmark script shares, whatever its kit: progress on stderr, the load warning,
the CPU model and math flags each JSON line records (figures only compare within one run on
one machine), free ports, the one JSON line, and the peers' own venvs.

Standard library only, so the scripts run from a plain checkout (``PYTHONPATH=src``).
Kit folders reach it through their ``_bench_env.py``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
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
PEER_MARKER = ".e2ekit-bench-ok"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The benchmark's one JSON line on stdout, and in ``out`` when given."""
    line = json.dumps(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line, flush=True)


def ensure_peer_venv(
    venv: Path,
    packages: Sequence[str],
    probe: str,
    cost: str,
    log: Callable[[str], Any] = print,
) -> Path:
    """A peer's own venv (never a project dependency): its interpreter, after creating it
    from this interpreter's base Python and ``pip install``-ing ``packages`` when it has no
    success marker yet. ``probe`` (Python code) must run in it before the marker is written;
    ``cost`` says what the first run takes (time, disk)."""
    py = venv / "bin" / "python"
    if (venv / PEER_MARKER).is_file() and py.is_file():
        return py
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not py.is_file():
        log(f"creating {venv} from {base}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    log(f"installing {' '.join(packages)} into {venv} ({cost})")
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*cmd, *packages], check=True, stdout=sys.stderr)
    subprocess.run([str(py), "-c", probe], check=True, stdout=sys.stderr)
    (venv / PEER_MARKER).write_text("ok\n")
    return py
