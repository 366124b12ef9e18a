"""Run logging: console + ``train.log``, ``metrics.jsonl`` and TensorBoard (rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from e2ekit.core.fileio import atomic_write

LOGGER_NAME = "e2ekit"
log = logging.getLogger(LOGGER_NAME)


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above active progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_console(level: int = logging.INFO) -> logging.Logger:
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return log


def add_file_log(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler | None) -> None:
    if handler is not None:
        log.removeHandler(handler)
        handler.close()


def jsonable(value: Any) -> Any:
    """Floats stay floats (NaN -> null), tensors/arrays become lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class MetricsWriter:
    """Appends evaluations to ``metrics.jsonl`` and scalars to TensorBoard."""

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(out_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a pinned dependency
                log.warning("tensorboard is not installed; skipping event files")

    def truncate_after(self, step: int) -> None:
        """On resume drop evaluations newer than the checkpoint (they will be redone)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        atomic_write(self.path, "".join(k + "\n" for k in keep))

    def write_eval(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(jsonable(record), ensure_ascii=False) + "\n")
        except OSError as exc:  # a full disk says so with no path: name the file
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None
        if self.tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self.tb.add_scalar(f"eval/{key}", value, step)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "train") -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
