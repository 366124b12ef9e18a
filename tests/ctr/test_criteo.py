"""Streaming Criteo reader: shapes, hashing, missing values, folders, globs, bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from e2ekit.core.errors import DataError
from e2ekit.ctr.data import CriteoReader, list_files, write_synthetic_criteo
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE, hash_strings
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "ctr" / "paddlerec_sample"


def _row(label: str = "1", ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(N_DENSE)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(N_SPARSE)]
    return "\t".join([label, *ints, *cats])


def _read_all(reader: CriteoReader) -> dict[str, np.ndarray]:
    batches = list(reader)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_criteo(out, rows=3000, seed=3, partitions=["20240101/00", "20240101/01"])
    return out


def test_reads_generated_data(synth: Path) -> None:
    reader = CriteoReader(synth, batch_size=512, hash_size=1000, chunk_bytes=64 << 10)
    batches = list(reader)
    assert [len(b["label"]) for b in batches[:-1]] == [512] * (len(batches) - 1)
    assert reader.stats.rows == 3000 and reader.stats.bad_rows == 0
    assert reader.stats.files == 2
    data = _read_all(reader)
    assert data["label"].dtype == np.int8 and data["label"].shape == (3000,)
    assert data["dense"].dtype == np.float32 and data["dense"].shape == (3000, N_DENSE)
    assert data["sparse"].dtype == np.int64 and data["sparse"].shape == (3000, N_SPARSE)
    assert data["sparse"].min() >= 0 and data["sparse"].max() < 1000
    assert (data["dense"] >= 0).all() and np.isfinite(data["dense"]).all()
    np.testing.assert_array_equal(data["label"], np.load(synth / "labels.npy"))
    # Chunking must not change what comes out.
    again = _read_all(CriteoReader(synth, batch_size=700, hash_size=1000))
    for key in data:
        np.testing.assert_array_equal(data[key], again[key])


def test_features_missing_and_stable_hash(tmp_path: Path) -> None:
    ints = ["", "-3", "0", "9"] + ["1"] * (N_DENSE - 4)
    cats = ["", "abc", "abc"] + ["ff"] * (N_SPARSE - 3)
    path = tmp_path / "a.txt"
    path.write_text(_row("0", ints, cats) + "\n" + _row("1", ints, cats) + "\n")
    data = _read_all(CriteoReader(path, hash_size=2**20))
    np.testing.assert_allclose(data["dense"][0, :4], [0, 0, 0, np.log(10)], rtol=1e-6)
    sparse = data["sparse"]
    assert sparse[0, 0] == 0  # missing -> reserved bucket
    assert sparse[0, 1] != sparse[0, 2]  # same value, different slots
    assert (sparse[0] == sparse[1]).all()


def _mix_ref(h: int) -> int:
    m = (1 << 64) - 1
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & m
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & m
    return h ^ (h >> 31)


def _hash_ref(value: str, slot: int, size: int) -> int:
    if not value:
        return 0
    h = 0xCBF29CE484222325
    for byte in value.encode():
        h = ((h ^ byte) * 0x100000001B3) & ((1 << 64) - 1)
    return _mix_ref(h ^ _mix_ref(slot + 1)) % (size - 1) + 1


def test_hash_is_pinned() -> None:
    # Saved models depend on these ids: the hash must never change silently.
    values = ["05db9164", "05db9164", "", "a" * 40, "é"]
    slots = np.array([0, 1, 2, 3, 4])
    got = hash_strings(pa.array(values), slots, 2**20).tolist()
    assert got[:4] == [457427, 547260, 0, 824468]
    assert got == [_hash_ref(v, s, 2**20) for v, s in zip(values, slots.tolist(), strict=True)]


def test_hash_groups_by_length_exactly_like_the_reference() -> None:
    """Values of many lengths in one call (grouped by length inside), long ones past the
    block path, a sliced array: every id equals the byte-by-byte reference."""
    rng = np.random.default_rng(3)
    lengths = [0, 1, 7, 8, 8, 8, 9, 63, 64, 65, 200]
    values = ["".join(chr(c) for c in rng.integers(33, 0x24F, n)) for n in lengths * 20]
    slots = rng.integers(0, 40, len(values))
    array = pa.array(["pad", *values])[1:]  # an offset into the buffers
    got = hash_strings(array, slots, 1009).tolist()
    assert got == [_hash_ref(v, s, 1009) for v, s in zip(values, slots.tolist(), strict=True)]


def test_stripped_trailing_fields_are_padded(tmp_path: Path) -> None:
    full = _row()
    path = tmp_path / "t.tsv"
    path.write_text("\n".join([full, full.rsplit("\t", 1)[0], full.rsplit("\t", 3)[0]]) + "\n")
    reader = CriteoReader(path)
    data = _read_all(reader)
    assert reader.stats.rows == 3 and reader.stats.bad_rows == 0
    assert data["sparse"][1, -1] == 0 and (data["sparse"][2, -3:] == 0).all()
    np.testing.assert_array_equal(data["sparse"][0, :-3], data["sparse"][2, :-3])


def test_folder_and_glob(synth: Path) -> None:
    files = list_files(synth)
    assert [p.name for p in files] == ["part-0.tsv", "part-0.tsv"]  # no _SUCCESS, no .npy
    assert list_files(str(synth / "2024*" / "*" / "part-*.tsv")) == files
    assert list_files(files[0]) == [files[0]]
    reader = CriteoReader(str(synth / "*" / "01" / "*.tsv"))
    assert sum(len(b["label"]) for b in reader) == 1500
    with pytest.raises(DataError, match="no such file"):
        list_files(synth / "missing")
    with pytest.raises(DataError, match="glob matches no files"):
        list_files(str(synth / "*.nothing"))


def _bad_file(tmp_path: Path) -> Path:
    ints = [str(i) for i in range(N_DENSE)]
    lines = [
        _row(),
        "1\t2\t3",  # line 2: wrong field count
        _row(ints=["x1", *ints[1:]]),  # line 3: non-numeric integer
        _row(label="2"),  # line 4: label not 0/1
        "",  # blank lines are skipped, not counted
        _row("0"),
    ]
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_counted_with_file_and_line(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    reader = CriteoReader(path)
    data = _read_all(reader)
    assert reader.stats.rows == 2 and reader.stats.bad_rows == 3
    assert data["label"].tolist() == [1, 0]
    shown = reader.stats.first_bad
    assert shown[0].startswith(f"{path}:2: expected 40")
    assert shown[1].startswith(f"{path}:3: I1 'x1'")
    assert shown[2].startswith(f"{path}:4: label '2'")


def test_integer_past_float_range_is_a_bad_row_not_inf(tmp_path: Path) -> None:
    ok = "1\t" + "\t".join(["3"] * N_DENSE) + "\t" + "\t".join(["a1b2c3d4"] * N_SPARSE)
    huge = "0\t" + "\t".join(["5", "9" * 401] + ["3"] * (N_DENSE - 2))
    huge += "\t" + "\t".join(["a1b2c3d4"] * N_SPARSE)
    path = tmp_path / "huge.tsv"
    path.write_text(f"{ok}\n{huge}\n{ok}\n")
    reader = CriteoReader(path)
    data = _read_all(reader)
    assert reader.stats.rows == 2 and reader.stats.bad_rows == 1
    assert np.isfinite(data["dense"]).all()
    assert reader.stats.first_bad == [f"{path}:2: I2 is out of range"]


def test_max_bad_rows_raises(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    assert sum(len(b["label"]) for b in CriteoReader(path, max_bad_rows=3)) == 2
    with pytest.raises(DataError, match=rf"{path.name}:4: label.*max_bad_rows=2"):
        list(CriteoReader(path, max_bad_rows=2))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared sample data absent")
def test_real_paddlerec_sample() -> None:
    files = list_files(SAMPLE)
    assert [p.name for p in files] == ["sample_test.txt", "sample_train.txt"]  # no LICENSE
    reader = CriteoReader(SAMPLE, max_bad_rows=0, batch_size=64)
    data = _read_all(reader)
    assert reader.stats.rows == 200 and reader.stats.bad_rows == 0
    assert set(np.unique(data["label"])) <= {0, 1}
    # The 39 stripped test rows end in missing categoricals -> bucket 0.
    assert (data["sparse"][:100, -1] == 0).sum() >= 39


# --- bytes that are not text -----------------------------------------------------------


def test_a_line_that_is_not_utf8_is_one_counted_bad_row(tmp_path: Path) -> None:
    from e2ekit.ctr.data import SlotReader

    path = tmp_path / "a.txt"
    path.write_bytes(f"{_row()}\n{_row()}\xe9\n{_row('0')}\n".encode("latin-1"))
    reader = CriteoReader(path)
    assert _read_all(reader)["label"].tolist() == [1, 0]
    assert reader.stats.bad_rows == 1 and reader.stats.first_bad == [f"{path}:2: not UTF-8 text"]
    slots = tmp_path / "part-0"
    slots.write_bytes(b"1 1:5\n0 2:caf\xe9\n0 3:7\n")
    reader = SlotReader(slots)
    assert _read_all(reader)["label"].tolist() == [1, 0]
    assert reader.stats.first_bad == [f"{slots}:2: not UTF-8 text"]


def test_csv_field_not_utf8_is_one_counted_bad_row(tmp_path: Path) -> None:
    from e2ekit.ctr.data import CriteoCSVReader

    header = ",".join(["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))])
    row = _row().replace("\t", ",")
    path = tmp_path / "a.csv"
    path.write_bytes(f"{header}\n{row}\n{row}\xe9\n{row}\n".encode("latin-1"))
    reader = CriteoCSVReader(path)
    assert len(_read_all(reader)["label"]) == 2
    assert reader.stats.first_bad == [f"{path}:3: not UTF-8 text"]


def test_csv_with_carriage_return_line_ends_reads_its_header(tmp_path: Path) -> None:
    from e2ekit.ctr.data import CriteoCSVReader

    header = ",".join(["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))])
    path = tmp_path / "a.csv"
    path.write_text(f"{header}\r{_row().replace(chr(9), ',')}\r", newline="")
    reader = CriteoCSVReader(path)
    assert _read_all(reader)["label"].tolist() == [1] and reader.stats.bad_rows == 0


def test_unit_separator_row_stopping_the_read_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(f"{_row()}\n{_row()}\n{_row()}\x1f\n")
    with pytest.raises(DataError, match=rf"{path.name}:3: contains a \\x1f byte .*max_bad_rows=0"):
        list(CriteoReader(path, max_bad_rows=0))


def test_shards_of_compressed_files_read_every_row_once(tmp_path: Path) -> None:
    import gzip

    for k in range(3):
        rows = "".join(f"{_row(str(i % 2))}\n" for i in range(10 + k))
        (tmp_path / f"part-{k}.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "part-3.txt").write_text("".join(f"{_row()}\n" for _ in range(7)))
    total = bad = 0
    for index in range(2):
        reader = CriteoReader(tmp_path, shard=(index, 2))
        total += sum(len(b["label"]) for b in reader)
        bad += reader.stats.bad_rows
    assert (total, bad) == (10 + 11 + 12 + 7, 0)


def test_csv_header_behind_two_byte_order_marks_is_a_data_error(tmp_path: Path) -> None:
    from e2ekit.ctr.data import CriteoCSVReader

    header = ",".join(["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))])
    path = tmp_path / "a.csv"
    path.write_text(f"\ufeff\ufeff{header}\n{_row().replace(chr(9), ',')}\n")
    with pytest.raises(DataError, match=r"a\.csv:1: header \(40 columns\) has no 'label'"):
        list(CriteoCSVReader(path))
