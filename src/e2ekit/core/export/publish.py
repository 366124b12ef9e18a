"""Writing the export folder: staged in a hidden sibling, published only when complete.

The folder is the contract between training and serving, so a reader must never see a
half-written one: every file is written into a temporary sibling, which is moved into place
(``deploy.yaml`` last, since readers start there) only after every check passed. A failed
export is kept beside the target as ``<out_dir>.failed-export`` for inspection.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from e2ekit.core.export.diff import to_numpy
from e2ekit.core.fileio import atomic_write, atomic_write_json
from e2ekit.core.infer import DEPLOY_FILE, SAMPLE_INPUTS_FILE, WEIGHTS_FILE

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"
FAILED_SUFFIX = ".failed-export"
# Artifacts that describe one specific model; stale copies from an older export are removed.
STALE_ARTIFACTS = (INT8_MODEL_FILE, WEIGHTS_FILE, SAMPLE_INPUTS_FILE)
# sample_inputs.npz is meant to stay small: later cases are dropped beyond this size.
SAMPLE_BYTES_CAP = 16 * 1024 * 1024


def write_json(path: Path, obj: Any) -> None:
    """The report as strict JSON: a NaN/inf would make it unreadable to browsers and ``jq``."""
    atomic_write_json(path, obj, allow_nan=False)


def write_yaml(path: Path, obj: Any) -> None:
    """``deploy.yaml`` keeps the key order it was built in: the I/O contract reads top-down."""
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False))


def update_report(folder: Path, key: str, section: dict[str, Any]) -> dict[str, Any]:
    """Set one section of the folder's report (created if missing); returns the whole report."""
    path = folder / REPORT_FILE
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[key] = section
    write_json(path, report)
    return report


def sample_cases(
    cases: Sequence[Mapping[str, torch.Tensor]], dynamic_axes: Mapping[str, Mapping[int, str]]
) -> dict[str, np.ndarray]:
    """Pick the input cases for sample_inputs.npz, keeping the file small.

    The first case is always kept (cut to batch 1 when it is large and every input has a
    dynamic axis 0); later cases are kept while the total stays under the cap.
    """
    out: dict[str, np.ndarray] = {}
    total = 0
    batch_dynamic = all(0 in dynamic_axes.get(n, {}) for n in cases[0])
    for i, case in enumerate(cases):
        arrays = {n: to_numpy(t) for n, t in case.items()}
        size = sum(a.nbytes for a in arrays.values())
        if i == 0 and size > SAMPLE_BYTES_CAP and batch_dynamic:
            arrays = {n: a[:1].copy() for n, a in arrays.items()}
            size = sum(a.nbytes for a in arrays.values())
        if i > 0 and total + size > SAMPLE_BYTES_CAP:
            break
        total += size
        out.update({f"case{i}.{n}": a for n, a in arrays.items()})
    return out


def write_sample_inputs(
    folder: Path,
    cases: Sequence[Mapping[str, torch.Tensor]],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> None:
    """``sample_inputs.npz``: a few input cases, so later checks (int8) need no kit code."""
    np.savez(folder / SAMPLE_INPUTS_FILE, **sample_cases(cases, dynamic_axes))


def staging_dir(out_dir: Path) -> Path:
    """A fresh hidden sibling of ``out_dir`` (same file system, so publishing is a rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def publish(tmp_dir: Path, out_dir: Path) -> None:
    """Move a complete export into ``out_dir``; deploy.yaml last since readers start there."""
    if not out_dir.exists():
        os.replace(tmp_dir, out_dir)  # atomic: the folder appears complete or not at all
        return
    if not out_dir.is_dir():
        raise NotADirectoryError(f"export target {str(out_dir)!r} exists and is not a folder")
    produced = {p.name for p in tmp_dir.iterdir()}
    for p in sorted(tmp_dir.iterdir(), key=lambda p: p.name == DEPLOY_FILE):
        os.replace(p, out_dir / p.name)
    for name in STALE_ARTIFACTS:
        if name not in produced:
            (out_dir / name).unlink(missing_ok=True)
    tmp_dir.rmdir()


def keep_failed(tmp_dir: Path, out_dir: Path) -> Path:
    """Park a failed export beside ``out_dir`` (replacing an older one) for inspection,
    leaving ``out_dir`` and the good export in it untouched; returns the parked folder."""
    failed_dir = out_dir.parent / f"{out_dir.name}{FAILED_SUFFIX}"
    shutil.rmtree(failed_dir, ignore_errors=True)
    os.replace(tmp_dir, failed_dir)
    return failed_dir
