"""Other CTR text formats, read into the same batches as the Criteo TSV reader.

* ``criteo_csv``: DeepCTR-style CSV with a header ``label,I1..I13,C1..C26`` (any order).
* ``slots``: PaddleRec-style slot text, ``click:1 dense_feature:0.1 ... 1:737395 2:210498``.

Both subclass :class:`CriteoReader`, so batching, ``.stats``, ``max_bad_rows`` and file:line
reporting behave exactly as for TSV, and categoricals go through the same per-slot
``hash_strings``: a row written as TSV, CSV or slots (feasign = the category text) gets the
same ids, so one model and one embedding table serve every format.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from e2ekit.core.errors import ConfigError, DataError, did_you_mean
from e2ekit.ctr.data.criteo import (
    DATA_SUFFIXES,
    DENSE_NAMES,
    N_DENSE,
    N_SPARSE,
    SPARSE_NAMES,
    CriteoReader,
    hash_strings,
    list_files,
    utf8_strings,
)

FORMATS = ("auto", "criteo", "criteo_csv", "slots")
CSV_SUFFIXES = (*DATA_SUFFIXES, ".csv")
_CSV_NAMES = ("label", *DENSE_NAMES, *SPARSE_NAMES)
# Loose on purpose: Arrow's own float parser has the final word; this only finds the culprits.
_NUM_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_KV_RE = r"^(?P<k>[^:]*):(?P<v>.*)$"
_UINT_RE = r"^[0-9]+$"
LABEL_KEYS = ("click", "label")
DENSE_KEY = "dense_feature"
_SNIFF_BYTES = 1 << 20
_MAX_LINE_BYTES = 16 << 20  # a first line longer than this is not looked at further


def _as_list(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def list_data_files(
    paths: str | Path | Sequence[str | Path], suffixes: Sequence[str] = CSV_SUFFIXES
) -> list[Path]:
    """Like :func:`list_files` for several items, but folders also yield ``*.csv`` files."""
    files: list[Path] = []
    for item in _as_list(paths):
        path = Path(item)
        if not path.is_dir():
            files.extend(list_files(item))
            continue
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and (p.suffix in suffixes or re.match(r"^(day_\d+|part-\d+)$", p.name))
        )
        if not found:
            raise DataError(f"{path}: no data files ({', '.join('*' + s for s in suffixes)})")
        files.extend(found)
    return files


def _to_float(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 with NaN for null or bad, bad mask) for a string array.

    One whole-array Arrow cast is the fast path; only when it fails (some value is not a
    number) do we pay for a regex pass to find which, so clean data costs one cast.
    """
    try:
        num = pc.cast(values, pa.float64())
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(values, _NUM_RE)
        try:
            num = pc.cast(pc.if_else(ok, values, pa.scalar(None, pa.string())), pa.float64())
        except pa.ArrowInvalid:  # the regex let through something Arrow rejects: go slow
            num = pa.array([_py_float(v) for v in values.to_pylist()], pa.float64())
    out = num.to_numpy(zero_copy_only=False)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    return out, present & ~np.isfinite(out)


def _py_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _log1p_dense(raw: np.ndarray) -> np.ndarray:
    """The TSV reader's rule: log(x + 1) for x >= 0, else (negative or missing) 0."""
    return np.log1p(np.maximum(np.nan_to_num(raw, nan=0.0), 0.0)).astype(np.float32)


class CriteoCSVReader(CriteoReader):
    """Criteo as DeepCTR-style CSV: header row, columns in any order, same batches as TSV.

    Integers may be written as floats (``260.0``) and empty means missing. Every column is
    read as a string and converted here rather than typed by Arrow: a typed column makes one
    bad value fail its whole block, and the streaming reader cannot resume after that.
    Arrow parses single-threaded because only then does it know the line number of a row
    with the wrong field count. Extra columns are ignored; a row whose fields are all empty
    is taken for a blank line and skipped silently.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        batch_size: int = 4096,
        hash_size: int = 2**20,
        max_bad_rows: int | None = None,
        chunk_bytes: int = 16 << 20,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            [],
            batch_size=batch_size,
            hash_size=hash_size,
            max_bad_rows=max_bad_rows,
            chunk_bytes=chunk_bytes,
            drop_last=drop_last,
        )
        self.files = list_data_files(paths)

    def _read_file(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        header = _first_line(path, skip_blank=False)
        if header is None:
            return
        try:
            names = [n.strip() for n in next(csv.reader([header.removeprefix("\ufeff")]), [])]
        except csv.Error as exc:
            raise DataError(f"{path}:1: cannot read the header row ({exc})") from None
        for name in _CSV_NAMES:
            if name not in names:
                raise DataError(f"{path}:1: header ({len(names)} columns) has no {name!r}")
        skipped: list[tuple[int, str]] = []

        def on_invalid(row: pcsv.InvalidRow) -> str:
            # Arrow may call this a block ahead of the batch it returns: only record here.
            why = f"expected {row.expected_columns} fields, got {row.actual_columns}"
            skipped.append((row.number if row.number is not None else -1, why))
            return "skip"

        read = pcsv.ReadOptions(block_size=self.chunk_bytes, use_threads=False)
        parse = pcsv.ParseOptions(
            newlines_in_values=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
        )
        # bytes, not strings: a field that is not UTF-8 spoils its row, not its whole block
        convert = pcsv.ConvertOptions(
            column_types={n: pa.binary() for n in names},
            include_columns=list(_CSV_NAMES),
            strings_can_be_null=True,
            null_values=[""],
        )
        try:
            stream = pcsv.open_csv(
                str(path), read_options=read, parse_options=parse, convert_options=convert
            )
        except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
            if "Empty CSV file" in str(exc):
                return
            raise DataError(f"{path}: cannot read near line 1: {exc}") from exc
        first_line = 2  # line 1 is the header
        pending: list[int] = []  # line numbers Arrow skipped that we have not passed yet
        while True:
            try:
                batch = stream.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{path}: cannot read near line {first_line}: {exc}") from exc
            for number, why in skipped:
                self._bad(path, number if number >= 0 else None, why)
                pending.append(number)
            skipped.clear()
            pending.sort()
            batch, not_utf8 = _utf8_batch(batch)
            out, first_line = self._parse_csv(path, batch, first_line, pending, not_utf8)
            pending = [p for p in pending if p >= first_line]
            if out is not None:
                yield out
        for number, why in skipped:
            self._bad(path, number if number >= 0 else None, why)

    def _parse_csv(
        self,
        path: Path,
        batch: pa.RecordBatch,
        first_line: int,
        gaps: list[int],
        not_utf8: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray] | None, int]:
        """Validate and convert one block; returns (chunk or None, first line of the next)."""
        n = batch.num_rows
        lines = _line_numbers(first_line, n, gaps)
        next_line = int(lines[-1]) + 1 if n else first_line
        if n == 0:
            return None, next_line
        label_s = batch.column("label")
        label, _ = _to_float(label_s)
        label_ok = (label == 0) | (label == 1)
        dense_s = pa.concat_arrays([batch.column(name) for name in DENSE_NAMES])
        raw, dense_bad = _to_float(dense_s)
        raw = raw.reshape(N_DENSE, n)
        dense_bad = dense_bad.reshape(N_DENSE, n)
        good = label_ok & ~dense_bad.any(axis=0)
        if not_utf8 is not None:
            good &= ~not_utf8
        blank = np.zeros(n, dtype=bool)
        if not good.all():
            blank = ~label_s.is_valid().to_numpy(zero_copy_only=False)
            blank &= np.isnan(raw).all(axis=0)
            for name in SPARSE_NAMES:
                blank &= ~batch.column(name).is_valid().to_numpy(zero_copy_only=False)
            if not_utf8 is not None:
                blank &= ~not_utf8
            for i in np.flatnonzero(~good & ~blank):
                why = (
                    "not UTF-8 text"
                    if not_utf8 is not None and not_utf8[i]
                    else _csv_why(batch, int(i), dense_bad[:, i])
                )
                self._bad(path, int(lines[i]), why)
        keep = np.flatnonzero(good)
        if keep.size == 0:
            return None, next_line
        sparse_s = pa.concat_arrays([batch.column(name) for name in SPARSE_NAMES])
        if keep.size < n:
            take = pa.array((np.arange(N_SPARSE)[:, None] * n + keep).ravel())
            sparse_s = sparse_s.take(take)
        sparse_s = pc.fill_null(sparse_s, "")
        slots = np.repeat(np.arange(N_SPARSE), keep.size)
        sparse = hash_strings(sparse_s, slots, self.hash_size).reshape(N_SPARSE, keep.size)
        self.stats.rows += keep.size
        chunk = {
            "label": (label[keep] == 1).astype(np.int8),
            "dense": np.ascontiguousarray(_log1p_dense(raw[:, keep]).T),
            "sparse": np.ascontiguousarray(sparse.T),
        }
        return chunk, next_line


def _utf8_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
    """The batch's binary columns as strings, and which rows held a field that was not
    UTF-8 (that field is now null)."""
    bad = np.zeros(batch.num_rows, dtype=bool)
    columns = []
    for col in batch.columns:
        strings, not_utf8 = utf8_strings(col, None)
        columns.append(strings)
        bad |= not_utf8
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names), bad


def _line_numbers(first_line: int, n: int, gaps: list[int]) -> np.ndarray:
    """File line of each of ``n`` consecutive kept rows, stepping over skipped lines."""
    lines = first_line + np.arange(n, dtype=np.int64)
    for gap in gaps:  # ascending; rows at or after a skipped line move down by one
        if n == 0 or gap > lines[-1]:
            break
        if gap >= first_line:
            lines[lines >= gap] += 1
    return lines


def _csv_why(batch: pa.RecordBatch, i: int, dense_bad: np.ndarray) -> str:
    """Human reason a CSV row was rejected (only computed for rejected rows)."""
    label = batch.column("label")[i].as_py()
    if label is None:
        return "label is missing"
    if _py_float(label) not in (0.0, 1.0):
        return f"label {label!r} is not 0 or 1"
    for j in np.flatnonzero(dense_bad):
        name = DENSE_NAMES[int(j)]
        return f"{name} {batch.column(name)[i].as_py()!r} is not a number"
    return "malformed row"


class SlotReader(CriteoReader):
    """PaddleRec-style slot text: ``label slot:feasign ...`` per line, space separated.

    The label is the first token, bare (``0``/``1``) or as ``click:0``/``label:1``.
    ``dense_feature:<float>`` tokens fill the 13 dense values in order, used as is (these
    files are already normalised; missing = 0). Other tokens are ``<slot>:<feasign>`` with
    ``slot`` one of ``slot_names`` (default ``"1".."26"``) and ``feasign`` an unsigned
    integer, hashed per slot with the TSV reader's function into [1, hash_size) after
    dropping leading zeros; an absent slot is 0. When a slot occurs several times in a row
    only the first feasign is kept: the batch holds one id per slot, and keeping the first
    is stable under appending. Unknown slots, bad numbers, tokens without ``:`` or more than
    13 dense values make the row malformed (counted, reported with file:line).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        batch_size: int = 4096,
        hash_size: int = 2**20,
        max_bad_rows: int | None = None,
        chunk_bytes: int = 16 << 20,
        drop_last: bool = False,
        slot_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            paths,
            batch_size=batch_size,
            hash_size=hash_size,
            max_bad_rows=max_bad_rows,
            chunk_bytes=chunk_bytes,
            drop_last=drop_last,
        )
        if slot_names is None:
            slot_names = [str(i) for i in range(1, N_SPARSE + 1)]
        names = [str(s) for s in slot_names]
        if not names:
            raise ConfigError("slot_names must not be empty")
        if len(set(names)) != len(names):
            raise ConfigError(f"slot_names has duplicates: {names}")
        clash = {DENSE_KEY, *LABEL_KEYS} & set(names)
        if clash:
            raise ConfigError(f"slot_names may not use reserved names {sorted(clash)}")
        self.slot_names = names

    def _parse(self, path: Path, lines: pa.Array, first_line: int) -> dict[str, np.ndarray] | None:
        n = len(lines)
        n_slots = len(self.slot_names)
        trimmed = pc.utf8_trim_whitespace(lines)
        blank = pc.equal(pc.binary_length(trimmed), 0).to_numpy(zero_copy_only=False)
        lists = pc.utf8_split_whitespace(trimmed)
        counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        tokens = lists.flatten()
        row = np.repeat(np.arange(n), counts)
        pos = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts)

        kv = pc.extract_regex(tokens, _KV_RE)
        is_kv = kv.is_valid().to_numpy(zero_copy_only=False)
        keys = pc.fill_null(pc.struct_field(kv, "k"), "")
        values = pc.fill_null(pc.struct_field(kv, "v"), "")

        # Label: the first token of each row, bare or as click:/label:.
        first = pos == 0
        label_key = pc.is_in(keys, value_set=pa.array(LABEL_KEYS)).to_numpy(zero_copy_only=False)
        label_text = pc.if_else(pa.array(is_kv), values, tokens)
        label_tok = np.flatnonzero(first & (label_key | ~is_kv))
        label_s = label_text.take(pa.array(label_tok))
        is_one = pc.equal(label_s, "1").to_numpy(zero_copy_only=False)
        is_zero = pc.equal(label_s, "0").to_numpy(zero_copy_only=False)
        label_ok = np.zeros(n, dtype=bool)
        label_ok[row[label_tok]] = is_one | is_zero
        label = np.zeros(n, dtype=np.int8)
        label[row[label_tok]] = is_one

        rest = ~first
        slot = pc.index_in(keys, value_set=pa.array(self.slot_names))
        slot_np = slot.fill_null(-1).to_numpy(zero_copy_only=False)
        is_slot = rest & is_kv & (slot_np >= 0)
        is_dense = rest & is_kv & pc.equal(keys, DENSE_KEY).to_numpy(zero_copy_only=False)
        tok_bad = rest & ~is_slot & ~is_dense  # no ':' or an unknown key

        sparse_i = np.flatnonzero(is_slot)
        feasign = values.take(pa.array(sparse_i))
        uint_ok = pc.match_substring_regex(feasign, _UINT_RE).to_numpy(zero_copy_only=False)
        tok_bad[sparse_i[~uint_ok]] = True

        dense_i = np.flatnonzero(is_dense)
        dense_val, dense_bad = _to_float(values.take(pa.array(dense_i)))
        d_row = row[dense_i]
        rank = np.arange(dense_i.size) - np.searchsorted(d_row, d_row, side="left")
        tok_bad[dense_i[dense_bad | (rank >= N_DENSE)]] = True

        good = label_ok & (np.bincount(row[tok_bad], minlength=n) == 0)
        bad = ~good & ~blank
        for i in np.flatnonzero(bad):
            self._bad(path, first_line + int(i), _slot_why(lines[int(i)].as_py(), self.slot_names))
        keep = np.flatnonzero(good & ~blank)
        if keep.size == 0:
            return None
        new_row = np.full(n, -1, dtype=np.int64)
        new_row[keep] = np.arange(keep.size)

        dense = np.zeros((keep.size, N_DENSE), dtype=np.float32)
        use = new_row[d_row] >= 0
        dense[new_row[d_row[use]], rank[use]] = dense_val[use]

        sparse = np.zeros((keep.size, n_slots), dtype=np.int64)
        s_row = new_row[row[sparse_i]]
        use = s_row >= 0
        if use.any():
            s_slot = slot_np[sparse_i[use]]
            canon = pc.utf8_ltrim(feasign.filter(pa.array(use)), "0")
            canon = pc.if_else(pc.equal(pc.binary_length(canon), 0), "0", canon)
            ids = hash_strings(canon, s_slot, self.hash_size)
            cell = s_row[use] * n_slots + s_slot
            _, firsts = np.unique(cell, return_index=True)  # first occurrence in line order
            sparse.ravel()[cell[firsts]] = ids[firsts]
        self.stats.rows += keep.size
        return {"label": label[keep], "dense": dense, "sparse": sparse}


def _slot_why(line: str, slot_names: Sequence[str]) -> str:
    """Human reason a slot line was rejected (only computed for rejected rows)."""
    tokens = line.split()
    head = tokens[0]
    key, sep, value = head.partition(":")
    label = value if sep else head
    if (sep and key not in LABEL_KEYS) or label not in ("0", "1"):
        return f"first token {head!r} is not a label (0, 1, click:0 or click:1)"
    n_dense = 0
    for token in tokens[1:]:
        key, sep, value = token.partition(":")
        if not sep:
            return f"token {token!r} is not slot:feasign"
        if key == DENSE_KEY:
            n_dense += 1
            if n_dense > N_DENSE:
                return f"more than {N_DENSE} {DENSE_KEY} tokens"
            if _py_float(value) is None or not np.isfinite(float(value)):
                return f"{DENSE_KEY} {value!r} is not a number"
        elif key not in slot_names:
            return f"unknown slot {key!r} in {token!r}"
        elif not re.match(_UINT_RE, value):
            return f"feasign {value!r} in {token!r} is not an unsigned integer"
    return "malformed row"


def _first_line(path: Path, *, skip_blank: bool = True) -> str | None:
    """First line (first non-blank with ``skip_blank``) of a maybe-compressed file, or None."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            buf = b""
            while True:
                block = stream.read(_SNIFF_BYTES)
                # \r alone ends a line too (as for Arrow's parser)
                *complete, buf = re.split(rb"\r\n|\r|\n", buf + block)
                if (not block and buf) or len(buf) > _MAX_LINE_BYTES:
                    complete.append(buf)  # the last line, or one too long to be a header
                    buf = b""
                for line in complete:
                    text = line.decode("utf-8", errors="replace")
                    if text.strip() or not skip_blank:
                        return text
                if not block:
                    return None
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def sniff_format(path: str | Path) -> str:
    """'criteo_csv', 'slots' or 'criteo' from the first non-empty line of ``path``."""
    line = _first_line(Path(path))
    if line is None:
        return "criteo"
    if "\t" not in line:
        fields = [f.strip().strip('"').lstrip("\ufeff") for f in line.split(",")]
        if len(fields) > 1 and fields[0] == "label":
            return "criteo_csv"
        tokens = line.split()
        if len(tokens) > 1 and any(":" in t for t in tokens):
            return "slots"
    return "criteo"


def open_reader(
    paths: str | Path | Sequence[str | Path], *, format: str = "auto", **kw: Any
) -> CriteoReader:
    """The reader for ``format`` (``auto`` sniffs the first file); ``kw`` go to the reader."""
    if format not in FORMATS:
        raise ConfigError(
            f"unknown data format {format!r}{did_you_mean(format, FORMATS)};"
            f" valid: {', '.join(FORMATS)}"
        )
    if format == "auto":
        format = sniff_format(list_data_files(paths)[0])
    if format == "criteo_csv":
        return CriteoCSVReader(paths, **kw)
    if format == "slots":
        return SlotReader(paths, **kw)
    return CriteoReader(paths, **kw)
