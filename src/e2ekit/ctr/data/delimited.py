"""Delimited text files read as ``data.schema`` names their columns (any CTR feature set).

One line is one row: fields are separated by the schema's one-character ``delimiter`` and
there is no quoting, so a field cannot contain the delimiter (nor a newline). Each line is
read whole by :class:`CriteoReader`'s Arrow machinery (so a bad row spoils only itself and
keeps its file:line) and split here with Arrow compute:

* ``label``: ``0``/``1`` (``0.0``/``1.0`` too);
* ``dense``: a finite number, empty = missing = 0, then the column's transform;
* ``sparse``: hashed with the column's own hash size, seeded by its slot; empty = bucket 0;
* ``multi``: split by ``sep``, the first ``max_len`` values hashed into the field's
  consecutive slots (padded with 0; an empty value is 0 too);
* ``ignore``: read and dropped.

:func:`parse_rows` is the same conversion for a server's raw lines, so a served row gets
exactly the ids the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.ctr.data.criteo import CriteoReader, hash_strings
from e2ekit.ctr.data.formats import _to_float, list_data_files
from e2ekit.ctr.features import KINDS, FeatureSchema
from e2ekit.ctr.models.layout import FeatureLayout

__all__ = ["DelimitedReader", "parse_rows"]

_ONE = pa.array(["1", "1.0"])
_LABELS = pa.array(["0", "1", "0.0", "1.0"])
_NULL = pa.scalar(None, pa.string())


@dataclass(frozen=True)
class _Plan:
    """Where each column of one line shape sits and how it becomes model input."""

    names: tuple[str, ...]
    delimiter: str
    label: int | None  # field index of the label, None for lines written without it
    dense: tuple[int, ...]  # field index of each dense column, file order
    log1p: np.ndarray  # (num_dense,) bool: that column takes log1p
    singles: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]  # hash, fields, slots
    multis: tuple[tuple[int, str, int, int, int], ...]  # field, sep, max_len, slot, hash
    base_slots: int


def _plan(schema: FeatureSchema, layout: FeatureLayout, *, with_label: bool = True) -> _Plan:
    columns = [c for c in schema.of_type(*KINDS) if with_label or c.type != "label"]
    first_slot = [int(s) for s in np.flatnonzero(np.diff(layout.slot_field, prepend=-1))]
    by_hash: dict[int, tuple[list[int], list[int]]] = {}
    multis = []
    dense = []
    log1p = []
    label = None
    base_slots = 0
    field = 0
    for j, col in enumerate(columns):
        if col.type == "label":
            label = j
        elif col.type == "dense":
            dense.append(j)
            log1p.append(col.transform == "log1p")
        elif col.type in ("sparse", "multi"):
            slot = first_slot[field]
            size = layout.slot_hash[slot]
            field += 1
            if col.type == "sparse":
                fields, slots = by_hash.setdefault(size, ([], []))
                fields.append(j)
                slots.append(slot)
                base_slots += 1
            else:
                multis.append((j, col.sep, col.max_len, slot, size))
                base_slots += col.max_len
    return _Plan(
        names=tuple(c.name for c in columns),
        delimiter=schema.delimiter,
        label=label,
        dense=tuple(dense),
        log1p=np.array(log1p, dtype=bool),
        singles=tuple((h, tuple(f), tuple(s)) for h, (f, s) in by_hash.items()),
        multis=tuple(multis),
        base_slots=base_slots,
    )


def _check(schema: FeatureSchema, layout: FeatureLayout) -> None:
    """Refuse a schema this reader cannot serve training with, or a layout of another one."""
    if not schema.custom:
        raise ConfigError(
            "data.schema columns: criteo files are read by the Criteo readers (data.format); "
            "the delimited reader reads a list of columns"
        )
    if not schema.of_type("label"):
        raise ConfigError(
            "data.schema has no label column: training, evaluation and predict read a label "
            "(0/1) column; add one with type: label"
        )
    ref = schema.layout(2)
    if (
        ref.num_dense != layout.num_dense
        or ref.slot_field != layout.slot_field
        or (layout.field_names and ref.field_names != layout.field_names)
    ):
        raise ConfigError(
            "the feature layout does not match data.schema; build it with "
            "schema.layout(model.hash_size)"
        )


@dataclass
class _Rows:
    """One converted block: which rows are good, their model input, and why others are not."""

    good: np.ndarray  # (n,) bool
    blank: np.ndarray  # (n,) bool: empty lines, skipped without a report
    label: np.ndarray | None  # (good,) int8
    dense: np.ndarray  # (good, num_dense) float32
    sparse: np.ndarray  # (good, base_slots) int64
    why: Callable[[int], str]


def _convert(lines: pa.Array, plan: _Plan) -> _Rows:
    """Validate and convert string ``lines`` (one row each) with no Python loop over rows."""
    n = len(lines)
    k = len(plan.names)
    d = plan.delimiter
    fields = pc.count_substring(lines, d).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    shaped = np.flatnonzero(fields == k)
    m = shaped.size
    ok_lines = lines if m == n else lines.take(pa.array(shaped))
    # every shaped line splits into exactly k pieces: row r's field j is piece r * k + j
    pieces = pc.split_pattern(ok_lines, d).flatten() if m else pa.array([], pa.string())
    base = np.arange(m, dtype=np.int64) * k

    def take(rows: np.ndarray, cols: Sequence[int]) -> pa.Array:
        idx = (rows[:, None] + np.asarray(cols, dtype=np.int64)).ravel()
        return pieces.take(pa.array(idx))

    ok = np.ones(m, dtype=bool)
    is_one = np.zeros(m, dtype=bool)
    label_ok = ok
    if plan.label is not None:
        label_s = take(base, [plan.label])
        is_one = pc.is_in(label_s, value_set=_ONE).to_numpy(zero_copy_only=False)
        label_ok = pc.is_in(label_s, value_set=_LABELS).to_numpy(zero_copy_only=False)
        ok = ok & label_ok

    nd = len(plan.dense)
    dense_all = np.zeros((m, nd), dtype=np.float32)
    not_number = np.zeros((m, nd), dtype=bool)
    not_finite = np.zeros((m, nd), dtype=bool)
    if nd and m:
        dense_s = take(base, plan.dense)
        empty = pc.equal(pc.binary_length(dense_s), 0)
        if pc.any(empty).as_py():
            dense_s = pc.if_else(empty, _NULL, dense_s)
        raw, bad = _to_float(dense_s)
        raw = raw.reshape(m, nd)
        bad = bad.reshape(m, nd)
        not_number = bad & np.isnan(raw)
        value = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        logged = np.log1p(np.maximum(value, 0.0))
        with np.errstate(over="ignore"):
            dense_all = np.where(plan.log1p, logged, value).astype(np.float32)
        not_finite = (bad & ~not_number) | ~np.isfinite(dense_all)
        ok &= ~(not_number | not_finite).any(axis=1)

    good = np.zeros(n, dtype=bool)
    good[shaped[ok]] = True
    blank = np.zeros(n, dtype=bool)
    wrong = np.flatnonzero(fields != k)
    if wrong.size:
        blank[wrong] = (
            pc.binary_length(lines.take(pa.array(wrong))).to_numpy(zero_copy_only=False) == 0
        )

    keep = np.flatnonzero(ok)
    rows = base[keep]
    sparse = np.zeros((keep.size, plan.base_slots), dtype=np.int64)
    if keep.size:
        for size, cols, slots in plan.singles:
            ids = hash_strings(take(rows, cols), np.tile(np.array(slots), keep.size), size)
            sparse[:, list(slots)] = ids.reshape(keep.size, len(cols))
        for col, sep, max_len, slot, size in plan.multis:
            lists = pc.split_pattern(take(rows, [col]), sep, max_splits=max_len)
            counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
            values = lists.flatten()
            row = np.repeat(np.arange(keep.size), counts)
            pos = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
            kept = pos < max_len  # the last piece may be the unsplit rest past max_len
            if not kept.all():
                values = values.filter(pa.array(kept))
                row, pos = row[kept], pos[kept]
            ids = hash_strings(values, np.full(len(values), slot), size)
            sparse[row, slot + pos] = ids

    where = np.full(n, -1, dtype=np.int64)
    where[shaped] = np.arange(m)

    def why(i: int) -> str:
        r = int(where[i])
        if r < 0:
            return f"expected {k} fields separated by {d!r} got {int(fields[i])}"
        if plan.label is not None and not label_ok[r]:
            text = pieces[int(base[r]) + plan.label].as_py()
            return f"label {plan.names[plan.label]} {text!r} is not 0 or 1"
        for c, j in enumerate(plan.dense):
            text = pieces[int(base[r]) + j].as_py()
            if not_number[r, c]:
                return f"{plan.names[j]} {text!r} is not a number"
            if not_finite[r, c]:
                return f"{plan.names[j]} {text!r} is not a finite number"
        return "malformed row"

    return _Rows(
        good=good,
        blank=blank,
        label=is_one[keep].astype(np.int8) if plan.label is not None else None,
        dense=dense_all[keep],
        sparse=sparse,
        why=why,
    )


class DelimitedReader(CriteoReader):
    """Batches ``{label (B,) int8, dense (B, num_dense) float32, sparse (B, slots) int64}``
    from delimited text files laid out as ``schema`` says.

    ``layout`` is ``schema.layout(model.hash_size)``; ``sparse`` holds its base slots (the
    sparse and multi columns), and the ``add_slots`` hook appends declared crosses. Rows
    with the wrong field count, a label other than 0/1 or a dense value that is not a
    finite number are skipped and counted (file:line and the column in ``.stats``); blank
    lines are skipped silently. With ``header: true`` each file's first line must name the
    columns in schema order. Batching, sharding and ``max_bad_rows`` are CriteoReader's.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        schema: FeatureSchema,
        layout: FeatureLayout,
        batch_size: int = 4096,
        max_bad_rows: int | None = None,
        chunk_bytes: int = 16 << 20,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> None:
        _check(schema, layout)
        super().__init__(
            [],
            batch_size=batch_size,
            hash_size=layout.slot_hash[0],
            max_bad_rows=max_bad_rows,
            chunk_bytes=chunk_bytes,
            drop_last=drop_last,
            shard=shard,
        )
        self.files = list_data_files(paths)
        self.schema = schema
        self.layout = layout
        self._plan = _plan(schema, layout)

    def _parse(self, path: Path, lines: pa.Array, first_line: int) -> dict[str, np.ndarray] | None:
        if first_line == 1 and len(lines):  # the part of the file that starts at byte 0
            lines, first_line = self._file_start(path, lines)
        rows = _convert(lines, self._plan)
        for i in np.flatnonzero(~rows.good & ~rows.blank):
            self._bad(path, first_line + int(i), rows.why(int(i)))
        if not rows.good.any():
            return None
        self.stats.rows += len(rows.sparse)
        assert rows.label is not None
        return {"label": rows.label, "dense": rows.dense, "sparse": rows.sparse}

    def _file_start(self, path: Path, lines: pa.Array) -> tuple[pa.Array, int]:
        """Check and drop the header line, or drop a byte-order mark from the first row."""
        first = str(lines[0].as_py())
        text = first.removeprefix("\ufeff")
        if self.schema.header:
            found = [name.strip() for name in text.split(self.schema.delimiter)]
            if found != list(self._plan.names):
                raise DataError(
                    f"{path}:1: the header names the columns {', '.join(found)}; data.schema "
                    f"expects {', '.join(self._plan.names)} (in this order, separated by "
                    f"{self.schema.delimiter!r})"
                )
            return lines.slice(1), 2
        if text != first:
            lines = pa.concat_arrays([pa.array([text], pa.string()), lines.slice(1)])
        return lines, 1


def parse_rows(
    lines: list[str], schema: FeatureSchema, layout: FeatureLayout
) -> dict[str, np.ndarray]:
    """Raw lines in the files' format -> ``{label, dense, sparse}`` exactly as the reader.

    A line holds every column, or every column but the label (its label is then -1). Raises
    ValueError naming the first bad row and column.
    """
    _check(schema, layout)
    full = _plan(schema, layout)
    bare = _plan(schema, layout, with_label=False)
    n = len(lines)
    arr = pc.utf8_rtrim(pa.array(lines, pa.string()), "\r\n")
    label = np.full(n, -1, dtype=np.int8)
    dense = np.zeros((n, layout.num_dense), dtype=np.float32)
    sparse = np.zeros((n, full.base_slots), dtype=np.int64)
    if n == 0:
        return {"label": label, "dense": dense, "sparse": sparse}
    k = len(full.names)
    d = schema.delimiter
    fields = pc.count_substring(arr, d).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    newline = pc.count_substring_regex(arr, "[\r\n]").to_numpy(zero_copy_only=False).astype(bool)
    first_bad: tuple[int, str] | None = None

    def note(i: int, why: str) -> None:
        nonlocal first_bad
        if first_bad is None or i < first_bad[0]:
            first_bad = (i, why)

    odd = np.flatnonzero(newline | ((fields != k) & (fields != k - 1)))
    if odd.size:
        i = int(odd[0])
        if newline[i]:
            note(i, "a row is one line; it holds a line break")
        else:
            note(
                i,
                f"{int(fields[i])} fields separated by {d!r}; expected {k} "
                f"({', '.join(full.names)}) or {k - 1} without the label",
            )
    for plan, want in ((full, k), (bare, k - 1)):
        idx = np.flatnonzero((fields == want) & ~newline)
        if idx.size == 0:
            continue
        rows = _convert(arr.take(pa.array(idx)), plan)
        bad = np.flatnonzero(~rows.good)
        if bad.size:
            note(int(idx[bad[0]]), rows.why(int(bad[0])))
            continue
        if rows.label is not None:
            label[idx] = rows.label
        dense[idx] = rows.dense
        sparse[idx] = rows.sparse
    if first_bad is not None:
        raise ValueError(f"row {first_bad[0]}: {first_bad[1]}")
    return {"label": label, "dense": dense, "sparse": sparse}
