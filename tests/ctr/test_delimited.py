"""Delimited files read as data.schema says: ids, pooling slots, bad rows, header, shards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.ctr.data.criteo import hash_strings
from e2ekit.ctr.data.delimited import DelimitedReader, parse_rows
from e2ekit.ctr.features import FeatureSchema, add_crosses

HS = 1 << 16
HEADER = "y,price,clicks,user,note,item,tags"


def _schema(**kw: object) -> FeatureSchema:
    spec = {
        "delimiter": ",",
        "header": True,
        "columns": [
            {"name": "y", "type": "label"},
            {"name": "price", "type": "dense"},
            {"name": "clicks", "type": "dense", "transform": "log1p"},
            {"name": "user", "type": "sparse", "hash_size": 1000},
            {"name": "note", "type": "ignore"},
            {"name": "item", "type": "sparse"},
            {"name": "tags", "type": "multi", "sep": "|", "max_len": 3},
        ],
        "crosses": [["user", "item"]],
    }
    spec.update(kw)
    return FeatureSchema.model_validate(spec)


SCHEMA = _schema()
LAYOUT = SCHEMA.layout(HS)
ROWS = [
    "1,2.5,3,alice,whatever,i1,a|b",
    "0,,0,bob,,i2,",
    "1.0,-1,-4,,x,i1,a||b|c|d",
    "0.0,1e3,1,alice,y,,c",
]


def _h(value: str, slot: int, size: int) -> int:
    return int(hash_strings(pa.array([value]), np.array([slot]), size)[0])


def _write(path: Path, rows: list[str], header: str | None = HEADER) -> Path:
    path.write_text("".join(f"{r}\n" for r in ([header] if header else []) + rows))
    return path


def _read(reader: DelimitedReader) -> dict[str, np.ndarray]:
    batches = list(reader)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_reads_label_dense_sparse_and_multi(tmp_path: Path) -> None:
    path = _write(tmp_path / "part.csv", ROWS)
    out = _read(DelimitedReader(tmp_path, schema=SCHEMA, layout=LAYOUT, batch_size=3))
    assert out["label"].dtype == np.int8 and out["label"].tolist() == [1, 0, 1, 0]
    assert out["dense"].dtype == np.float32 and out["dense"].shape == (4, 2)
    np.testing.assert_allclose(out["dense"][:, 0], [2.5, 0.0, -1.0, 1000.0])  # as written
    np.testing.assert_allclose(out["dense"][:, 1], [math.log(4), 0, 0, math.log(2)], rtol=1e-6)
    sparse = out["sparse"]
    assert sparse.dtype == np.int64 and sparse.shape == (4, 5)  # user, item, 3 tag slots
    assert sparse[0, 0] == _h("alice", 0, 1000) == sparse[3, 0]
    assert sparse[2, 0] == 0 and sparse[3, 1] == 0  # empty = missing
    assert sparse[0, 1] == _h("i1", 1, HS) == sparse[2, 1]
    tags = [[_h(t, 2, HS) if t else 0 for t in row] for row in (["a", "b", ""], ["", "", ""])]
    assert sparse[0, 2:].tolist() == tags[0]  # padded with 0
    assert sparse[1, 2:].tolist() == tags[1]
    # "a||b|c|d": the first 3 values kept, the empty one in the middle is 0
    assert sparse[2, 2:].tolist() == [_h("a", 2, HS), 0, _h("b", 2, HS)]
    assert sparse[3, 2] == _h("c", 2, HS) != _h("c", 3, HS)  # one seed for the whole field
    assert (sparse < 1000)[:, 0].all() and sparse.max() < HS
    reader = DelimitedReader(path, schema=SCHEMA, layout=LAYOUT)
    reader.add_slots = lambda s: add_crosses(s, SCHEMA, LAYOUT)
    crossed = _read(reader)["sparse"]
    assert crossed.shape == (4, 6) and (crossed[:, :5] == sparse).all()


def test_parse_rows_gives_the_readers_ids(tmp_path: Path) -> None:
    _write(tmp_path / "part.csv", ROWS)
    read = _read(DelimitedReader(tmp_path, schema=SCHEMA, layout=LAYOUT))
    parsed = parse_rows(ROWS, SCHEMA, LAYOUT)
    for key in ("label", "dense", "sparse"):
        np.testing.assert_array_equal(parsed[key], read[key])
    # a server row may leave out the label; rows of both shapes can mix
    unlabelled = [r.split(",", 1)[1] for r in ROWS]
    mixed = parse_rows([unlabelled[0], ROWS[1], unlabelled[2], ROWS[3]], SCHEMA, LAYOUT)
    assert mixed["label"].tolist() == [-1, 0, -1, 0]
    np.testing.assert_array_equal(mixed["dense"], read["dense"])
    np.testing.assert_array_equal(mixed["sparse"], read["sparse"])
    assert parse_rows([], SCHEMA, LAYOUT)["sparse"].shape == (0, 5)


def test_parse_rows_names_the_first_bad_row_and_column() -> None:
    with pytest.raises(ValueError, match=r"row 2: price 'abc' is not a number"):
        parse_rows([ROWS[0], ROWS[1], "1,abc,3,u,n,i,t", "1,x"], SCHEMA, LAYOUT)
    with pytest.raises(ValueError, match=r"row 1: 2 fields separated by ','; expected 7 \(y, pri"):
        parse_rows([ROWS[0], "1,x", ROWS[2]], SCHEMA, LAYOUT)
    with pytest.raises(ValueError, match=r"row 0: label y '2' is not 0 or 1"):
        parse_rows(["2,1,1,u,n,i,t"], SCHEMA, LAYOUT)


def test_bad_rows_are_counted_with_file_line_and_column(tmp_path: Path) -> None:
    rows = [
        ROWS[0],
        "1,2.5,3,alice,whatever,i1",  # line 3: a field short
        "",  # blank: skipped silently
        "1,abc,3,u,n,i,t",  # line 5
        "7,1,1,u,n,i,t",  # line 6
        "0,1,inf,u,n,i,t",  # line 7
        "0,1e39,1,u,n,i,t",  # line 8: past float32
        ROWS[1],
    ]
    path = _write(tmp_path / "d.csv", rows)
    reader = DelimitedReader(path, schema=SCHEMA, layout=LAYOUT, chunk_bytes=64)
    out = _read(reader)
    assert out["label"].tolist() == [1, 0] and reader.stats.rows == 2
    assert reader.stats.bad_rows == 5
    assert reader.stats.first_bad == [
        f"{path}:3: expected 7 fields separated by ',' got 6",
        f"{path}:5: price 'abc' is not a number",
        f"{path}:6: label y '7' is not 0 or 1",
        f"{path}:7: clicks 'inf' is not a finite number",
        f"{path}:8: price '1e39' is not a finite number",
    ]
    strict = DelimitedReader(path, schema=SCHEMA, layout=LAYOUT, max_bad_rows=1)
    with pytest.raises(DataError, match=rf"{path}:5: price 'abc'.*max_bad_rows=1"):
        list(strict)


def test_header_mismatch_names_file_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", ROWS, header="y,price,clicks,user,note,tags,item")
    with pytest.raises(DataError) as err:
        list(DelimitedReader(path, schema=SCHEMA, layout=LAYOUT))
    assert str(path) in str(err.value)
    assert "user, note, tags, item" in str(err.value)  # found
    assert "user, note, item, tags" in str(err.value)  # expected


def test_tsv_without_header_and_byte_order_mark(tmp_path: Path) -> None:
    schema = _schema(delimiter="\t", header=False)
    layout = schema.layout(HS)
    path = tmp_path / "d.tsv"
    path.write_text("\ufeff" + "".join(r.replace(",", "\t") + "\n" for r in ROWS))
    out = _read(DelimitedReader(path, schema=schema, layout=layout))
    np.testing.assert_array_equal(out["sparse"], parse_rows(ROWS, SCHEMA, LAYOUT)["sparse"])
    assert out["label"].tolist() == [1, 0, 1, 0]


def test_shards_read_the_same_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        f"{rng.integers(2)},{rng.random():.3f},{rng.integers(9)},u{rng.integers(50)},n,"
        f"i{rng.integers(50)},{'|'.join(f't{t}' for t in rng.integers(9, size=rng.integers(4)))}"
        for _ in range(300)
    ]
    path = _write(tmp_path / "d.csv", rows)
    kw = {"schema": SCHEMA, "layout": LAYOUT, "chunk_bytes": 1024}
    whole = _read(DelimitedReader(path, **kw))
    parts = [_read(DelimitedReader(path, shard=(i, 2), **kw)) for i in range(2)]
    assert 0 < len(parts[0]["label"]) < 300
    for key in ("label", "dense", "sparse"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    assert len(whole["label"]) == 300


def test_schema_without_label_or_other_layout_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "d.csv", ROWS)
    columns = [c for c in SCHEMA.columns if c.type != "label"]  # type: ignore[union-attr]
    bare = _schema(columns=[c.model_dump(exclude_unset=True) for c in columns])
    with pytest.raises(ConfigError, match="training, evaluation and predict read a label"):
        DelimitedReader(tmp_path, schema=bare, layout=bare.layout(HS))
    with pytest.raises(ConfigError, match="layout does not match"):
        DelimitedReader(tmp_path, schema=SCHEMA, layout=_schema(crosses=[]).layout(HS))
