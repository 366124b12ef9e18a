"""CSV and slot readers: same batches as TSV, bad rows with file:line, format sniffing."""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.ctr.data import (
    CriteoCSVReader,
    CriteoReader,
    SlotReader,
    open_reader,
    write_synthetic_criteo,
)
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE, hash_strings
from tests.conftest import SHARED_DATA

DEEPCTR = SHARED_DATA / "ctr" / "deepctr_sample" / "criteo_sample.txt"
HEADER = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
HS = 1 << 20


def _read_all(reader: CriteoReader) -> dict[str, np.ndarray]:
    batches = list(reader)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _h(value: str, slot: int) -> int:
    return int(hash_strings(pa.array([value]), np.array([slot]), HS)[0])


def _tsv_to_csv(tsv: Path, out: Path, seed: int = 0) -> Path:
    """Same rows as CSV: shuffled column order, every other row's integers written as floats."""
    order = list(range(len(HEADER)))
    random.Random(seed).shuffle(order)
    lines = [",".join(HEADER[j] for j in order)]
    for k, line in enumerate(tsv.read_text().splitlines()):
        fields = (line.split("\t") + [""] * 40)[:40]
        if k % 2:
            fields[1:14] = [f"{v}.0" if v else v for v in fields[1:14]]
        lines.append(",".join(fields[j] for j in order))
    out.write_text("\n".join(lines) + "\n")
    return out


def _csv_row(label: str = "1", i5: str = "5", cats: int = 26) -> str:
    ints = [str(i) for i in range(N_DENSE)]
    ints[4] = i5
    return ",".join([label, *ints, *(f"{i:08x}" for i in range(cats))])


def _lines_in(first_bad: list[str], path: Path) -> list[int]:
    return sorted(int(re.match(rf"{re.escape(str(path))}:(\d+):", s).group(1)) for s in first_bad)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tsv")
    return write_synthetic_criteo(out, rows=1500, seed=5).files[0]


def test_csv_gives_the_tsv_batches(tsv: Path, tmp_path: Path) -> None:
    csv_path = _tsv_to_csv(tsv, tmp_path / "same.csv")
    ref = list(CriteoReader(tsv, batch_size=256, hash_size=HS))
    got = list(CriteoCSVReader(csv_path, batch_size=256, hash_size=HS, chunk_bytes=20_000))
    assert [len(b["label"]) for b in got] == [len(b["label"]) for b in ref]
    for a, b in zip(ref, got, strict=True):
        for key in ("label", "dense", "sparse"):
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.skipif(not DEEPCTR.is_file(), reason="shared DeepCTR sample absent")
def test_real_deepctr_sample() -> None:
    reader = CriteoCSVReader(DEEPCTR, batch_size=64, hash_size=HS, max_bad_rows=0)
    data = _read_all(reader)
    assert reader.stats.rows == 200 and reader.stats.bad_rows == 0
    assert data["dense"].shape == (200, N_DENSE) and data["sparse"].shape == (200, N_SPARSE)
    assert set(np.unique(data["label"])) <= {0, 1}
    assert np.isfinite(data["dense"]).all() and (data["dense"] >= 0).all()
    # Row 1: I1 missing, I2=3, I3=260.0; C1=05db9164, C19 empty.
    np.testing.assert_allclose(data["dense"][0, :3], np.log1p([0.0, 3.0, 260.0]), rtol=1e-6)
    assert data["sparse"][0, 0] == _h("05db9164", 0)
    assert data["sparse"][0, 18] == 0
    assert data["dense"][1, 1] == 0.0  # I2 = -1: negatives map to 0


def test_csv_bad_rows_reported_with_lines(tmp_path: Path) -> None:
    rows = [_csv_row() for _ in range(60)]
    rows[3] = "1,2,3"  # line 5: wrong field count
    rows[18] = _csv_row(cats=27)  # line 20: one field too many
    rows[19] = ""  # line 21: blank, skipped silently
    rows[20] = _csv_row(i5="abc")  # line 22
    rows[38] = _csv_row(label="2")  # line 40
    rows[50] = _csv_row(label="1.0")  # fine: labels written as floats
    rows[55] = ",".join(["0", "1", *["x"] * 38])  # line 57: I2 not a number
    path = tmp_path / "bad.csv"
    path.write_text(",".join(HEADER) + "\n" + "\n".join(rows) + "\n")
    reader = CriteoCSVReader(path, batch_size=16, chunk_bytes=2048)
    data = _read_all(reader)
    assert reader.stats.rows == 54 and len(data["label"]) == 54
    assert reader.stats.bad_rows == 5
    assert _lines_in(reader.stats.first_bad, path) == [5, 20, 22, 40, 57]
    text = " ".join(reader.stats.first_bad)
    assert "expected 40 fields, got 3" in text
    assert "I5 'abc' is not a number" in text
    assert "label '2' is not 0 or 1" in text


def test_csv_max_bad_rows_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([",".join(HEADER), _csv_row(), _csv_row(i5="?"), _csv_row()]))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: I5 '\?'"):
        list(CriteoCSVReader(path, max_bad_rows=0))


def test_csv_missing_column_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(",".join(h for h in HEADER if h != "C7") + "\n")
    with pytest.raises(DataError, match=r"short\.csv.*'C7'"):
        list(CriteoCSVReader(path))
    gz = tmp_path / "extra.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write(",".join([*HEADER, "note"]) + "\n" + _csv_row() + ",hello\n")
    reader = CriteoCSVReader(gz, hash_size=HS)
    data = _read_all(reader)
    assert reader.stats.rows == 1 and data["sparse"][0, 25] == _h(f"{25:08x}", 25)


SLOTS = [
    "click:1 dense_feature:0.5 dense_feature:0.25 1:123 3:7 3:9 26:0042",
    "0 2:5",
    "",
    "label:0 " + " ".join(f"dense_feature:{i / 10}" for i in range(13)) + " 1:1",
]


def test_slot_format(tmp_path: Path) -> None:
    path = tmp_path / "slots.txt"
    path.write_text("\n".join(SLOTS) + "\n")
    reader = SlotReader(path, hash_size=HS, max_bad_rows=0)
    data = _read_all(reader)
    assert reader.stats.rows == 3 and reader.stats.bad_rows == 0
    np.testing.assert_array_equal(data["label"], [1, 0, 0])
    assert data["dense"].dtype == np.float32 and data["sparse"].dtype == np.int64
    np.testing.assert_array_equal(data["dense"][0], [0.5, 0.25] + [0.0] * 11)
    np.testing.assert_allclose(data["dense"][2], np.arange(13) / 10, rtol=1e-6)
    expect = np.zeros(N_SPARSE, dtype=np.int64)
    expect[[0, 2, 25]] = [_h("123", 0), _h("7", 2), _h("42", 25)]  # first 3:x kept
    np.testing.assert_array_equal(data["sparse"][0], expect)
    assert (data["sparse"][1] != 0).sum() == 1 and data["sparse"][1, 1] == _h("5", 1)


def test_slot_names_configurable(tmp_path: Path) -> None:
    path = tmp_path / "named.txt"
    path.write_text("1 user:9 item:4\n")
    data = _read_all(SlotReader(path, hash_size=HS, slot_names=["user", "item"]))
    np.testing.assert_array_equal(data["sparse"], [[_h("9", 0), _h("4", 1)]])
    with pytest.raises(ConfigError):
        SlotReader(path, slot_names=["click", "item"])


def test_slot_bad_rows_reported_with_lines(tmp_path: Path) -> None:
    lines = [
        "1 1:3",
        "click:2 1:3",  # 2: label
        "1 abc",  # 3: no ':'
        "0 27:5",  # 4: unknown slot
        "1 1:3",
        "1 1:x",  # 6: feasign not an integer
        "0 dense_feature:zz",  # 7
        "1 " + " ".join(["dense_feature:1"] * 14),  # 8: too many dense values
    ]
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    reader = SlotReader(path)
    assert len(_read_all(reader)["label"]) == 2
    assert reader.stats.bad_rows == 6
    assert _lines_in(reader.stats.first_bad, path) == [2, 3, 4, 6, 7]
    text = " ".join(reader.stats.first_bad)
    for why in ("not a label", "'abc' is not slot:feasign", "unknown slot '27'", "'x'"):
        assert why in text
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: "):
        list(SlotReader(path, max_bad_rows=0))


def test_open_reader_detects_each_format(tsv: Path, tmp_path: Path) -> None:
    csv_path = _tsv_to_csv(tsv, tmp_path / "data.csv")
    slots = tmp_path / "slots.txt"
    slots.write_text("\n" + "\n".join(SLOTS) + "\n")  # a leading blank line is skipped
    assert type(open_reader(tsv)) is CriteoReader
    assert type(open_reader(csv_path, batch_size=8)) is CriteoCSVReader
    assert type(open_reader(tmp_path / "data.csv")) is CriteoCSVReader
    assert type(open_reader([slots])) is SlotReader
    assert type(open_reader(slots, format="criteo")) is CriteoReader
    assert type(open_reader(tsv, format="slots")) is SlotReader
    folder = tmp_path / "csvdir"
    folder.mkdir()
    _tsv_to_csv(tsv, folder / "part.csv")
    reader = open_reader(folder, hash_size=HS)
    assert type(reader) is CriteoCSVReader and reader.files == [folder / "part.csv"]
    with pytest.raises(ConfigError, match=r"'criteo-csv'.*criteo_csv.*valid: auto, criteo"):
        open_reader(tsv, format="criteo-csv")
