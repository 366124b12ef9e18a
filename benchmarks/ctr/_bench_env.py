"""What every ctr benchmark script shares: progress on stderr, the load warning and the CPU
model that each JSON line records (figures only compare within one run on one CPU)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_now(when: str) -> float:
    """The 1-minute load average, with a warning when other work shares the cores."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        log(f"warning ({when}): 1-min load average {load:.1f} on {cpus} CPUs; results are noisy")
    return round(load, 2)


MATH_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """The CPU's flags that decide fp32 / bf16 / int8 speed (what bf16 results depend on)."""
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


def start_redis(folder: Path) -> tuple[subprocess.Popen, str, str]:
    """A throwaway redis-server (no persistence) on a free port: process, URL, version."""
    import redis

    exe = shutil.which("redis-server")
    assert exe is not None
    folder.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    for _ in range(5):
        port = free_port()
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(folder)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                return proc, url, version
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError("redis-server did not start")


def emit(result: dict, out: Path | None) -> None:
    """The benchmark's one JSON line on stdout, and in ``out`` when given."""
    import json

    line = json.dumps(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line, flush=True)
