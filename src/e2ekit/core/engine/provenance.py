"""``env.json``: what a run ran on, so a result can be reproduced or explained later.

Package versions, the git commit of the source tree (when it is a checkout), Python, and
the CPU and GPU models: the facts people ask for first when two runs disagree.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from e2ekit.core.fileio import atomic_write_json

PACKAGES = (
    "e2ekit",
    "torch",
    "torchvision",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "tokenizers",
    "pydantic",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the e2ekit source tree, with ``+dirty`` for local changes (once a process)."""
    src = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                wanted = ("avx2", "avx512", "amx", "vnni", "bf16", "fp16")
                flags = sorted({f for f in value.split() if f.startswith(wanted) or f in wanted})
                break
    except OSError:
        pass
    return {"model": model, "flags": flags, "threads": torch.get_num_threads()}


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return out


def environment_record() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: v for name in PACKAGES if (v := _version(name))},
        "git_commit": _git_commit(),
        "cpu": _cpu(),
        "cuda": torch.version.cuda,
        "gpus": _gpus(),
    }


def write_env_record(path: Path) -> None:
    atomic_write_json(path, environment_record())
