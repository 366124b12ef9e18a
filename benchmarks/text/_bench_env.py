"""What the text benchmark scripts share: the helpers of ``benchmarks/_bench_common.py``."""

from __future__ import annotations

import sys
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

__all__ = ["MATH_FLAGS", "cpu_flags", "cpu_model", "emit", "free_port", "load_now", "log"]
