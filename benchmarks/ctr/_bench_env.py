"""What every ctr benchmark script shares: the helpers of ``benchmarks/_bench_common.py`` and a
throwaway Redis server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench_common import (
    MATH_FLAGS,
    cpu_flags,
    cpu_model,
    emit,
    free_port,
    load_now,
    log,
)

__all__ = [
    "MATH_FLAGS",
    "cpu_flags",
    "cpu_model",
    "emit",
    "free_port",
    "load_now",
    "log",
    "start_redis",
]


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
