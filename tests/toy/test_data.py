"""Toy CSV readers: bad rows are DataErrors naming file:line, never NaN data or csv.Error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.errors import DataError
from e2ekit.toy.data import read_csv, read_features


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_csv_reads_header_and_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.csv", "label,f1,f2\n1,0.5,-2\n\n0,3,4\n")
    x, y = read_csv(path, 2, 3)
    np.testing.assert_array_equal(x, [[0.5, -2], [3, 4]])
    assert y.tolist() == [1, 0]


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e39"])
def test_read_csv_refuses_non_finite_features(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, "train.csv", f"label,f1,f2\n0,1,2\n1,{value},2\n")
    with pytest.raises(DataError, match=rf"train\.csv:3: column 1 is '{value}'; .*finite"):
        read_csv(path, 2, 2)


@pytest.mark.parametrize("reader", ["read_csv", "read_features"])
def test_a_field_of_megabytes_is_a_data_error_naming_the_line(tmp_path: Path, reader: str) -> None:
    path = _write(tmp_path, "data.csv", "0,1,2\n1," + "7" * 200_000 + ",2\n")
    with pytest.raises(DataError, match=r"data\.csv:2: not a valid CSV row \(field larger"):
        read_csv(path, 2, 2) if reader == "read_csv" else read_features(path, 2)


def test_read_features_header_only_on_the_first_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "in.csv", "f1,f2\n1,2\na,b\n")
    with pytest.raises(DataError, match=r"in\.csv:3: not a number"):
        read_features(path, 2)
    np.testing.assert_array_equal(
        read_features(_write(tmp_path, "ok.csv", "f1,f2\n1,2\n"), 2), [[1, 2]]
    )
