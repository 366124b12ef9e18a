"""Generated tabular classification data, or a CSV file of ``label,f1,...,fD`` rows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from e2ekit.core.errors import DataError
from e2ekit.core.textio import read_utf8
from e2ekit.toy.runner import FLOAT32_MAX


def make_blobs(
    num_samples: int, num_features: int, num_classes: int, seed: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Features from N(0, 1); labels from a fixed random 2-layer teacher plus noise.

    The teacher depends only on the shapes (not ``seed``), so train and val
    splits drawn with different seeds share one learnable concept.
    """
    teacher = np.random.default_rng(12345 + num_features * 31 + num_classes)
    w1 = teacher.normal(size=(num_features, 32)) / math.sqrt(num_features)
    w2 = teacher.normal(size=(32, num_classes))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, num_features)).astype(np.float32)
    logits = np.tanh(x @ w1 * 2.0) @ w2
    logits = logits + noise * rng.gumbel(size=logits.shape)
    return x, logits.argmax(axis=1).astype(np.int64)


CSV_FIELD_LIMIT = 131072  # the csv module's default field_size_limit


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per CSV record; a malformed record (an unclosed quote, a field
    of megabytes) is a DataError naming the line rather than ``csv.Error``."""
    with io.StringIO(read_utf8(path, DataError), newline="") as fh:
        reader = csv.reader(fh)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{path}:{reader.line_num}: not a valid CSV row ({exc})") from None
            # csv's own limit is process-wide and other libraries raise it (scipy does on
            # import): hold every field to the standard 128 KiB here
            if any(len(field) > CSV_FIELD_LIMIT for field in row):
                raise DataError(
                    f"{path}:{reader.line_num}: not a valid CSV row (field larger than field "
                    f"limit ({CSV_FIELD_LIMIT}))"
                )
            yield reader.line_num, row


def _check_finite(path: Path, line_no: int, fields: list[str], values: list[float]) -> None:
    """NaN, inf or a float32 overflow would train on (or score) NaN: refuse the row."""
    bad = [j for j, v in enumerate(values) if not abs(v) <= FLOAT32_MAX]
    if bad:
        raise DataError(
            f"{path}:{line_no}: column {bad[0] + 1} is {fields[bad[0]]!r}; "
            "features must be finite float32 numbers"
        )


def read_csv(path: Path, num_features: int, num_classes: int | None) -> tuple[np.ndarray, ...]:
    """Rows ``label,f1..fD`` (a header row is allowed); errors name the file and line."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    xs, ys = [], []
    for k, (line_no, row) in enumerate(_csv_rows(path)):
        if not row or (k == 0 and row[0].strip().lower() == "label"):
            continue
        if len(row) != num_features + 1:
            raise DataError(
                f"{path}:{line_no}: expected {num_features + 1} columns "
                f"(label + {num_features} features), got {len(row)}"
            )
        try:
            label = int(row[0])
            feats = [float(v) for v in row[1:]]
        except ValueError as exc:
            raise DataError(f"{path}:{line_no}: not a number ({exc})") from None
        if num_classes is not None and not 0 <= label < num_classes:
            raise DataError(
                f"{path}:{line_no}: label {label} is out of range 0..{num_classes - 1}; "
                "fix the row or set data.num_classes"
            )
        if not -(2**63) <= label < 2**63:
            raise DataError(f"{path}:{line_no}: label {label} does not fit in 64 bits")
        _check_finite(path, line_no, row[1:], feats)
        xs.append(feats)
        ys.append(label)
    if not xs:
        raise DataError(f"{path}: no data rows")
    return np.asarray(xs, np.float32), np.asarray(ys, np.int64)


def read_features(path: Path, num_features: int) -> np.ndarray:
    """Rows of D features (predict input); a leading label column is tolerated."""
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    rows = []
    for k, (line_no, row) in enumerate(_csv_rows(path)):
        if not row:
            continue
        if len(row) == num_features + 1:
            row = row[1:]
        if len(row) != num_features:
            raise DataError(
                f"{path}:{line_no}: expected {num_features} feature columns, got {len(row)}"
            )
        try:
            values = [float(v) for v in row]
        except ValueError as exc:
            if k == 0:
                continue  # header
            raise DataError(f"{path}:{line_no}: not a number ({exc})") from None
        _check_finite(path, line_no, row, values)
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    return np.asarray(rows, np.float32)


class TabularDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "label": self.y[i]}
