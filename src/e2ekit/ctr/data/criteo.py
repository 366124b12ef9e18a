"""Streaming Criteo TSV reader: chunked Arrow parsing, vectorised features, bad rows counted.

Each line is read by ``pyarrow.csv.open_csv`` as one raw string (a delimiter that never
occurs in Criteo data), then split into fields with Arrow compute. That way rows whose
trailing empty fields were stripped (37-39 fields, common in Criteo test files) are padded
instead of rejected, a malformed row spoils only itself (never its whole block), and every
row keeps its exact file line number for error messages. Nothing is loaded beyond one
``chunk_bytes`` block per step.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from numpy.lib.stride_tricks import as_strided

from e2ekit.core.errors import DataError

N_DENSE = 13
N_SPARSE = 26
N_FIELDS = 1 + N_DENSE + N_SPARSE
MIN_FIELDS = 37  # stripped trailing empty categoricals are padded back up to N_FIELDS
DENSE_NAMES = tuple(f"I{i}" for i in range(1, N_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, N_SPARSE + 1))
# Folder listing picks these; anything else (LICENSE, probs.npy, _SUCCESS) is skipped.
DATA_SUFFIXES = (".txt", ".tsv", ".gz")
_DATA_NAME = re.compile(r"^(day_\d+|part-\d+)$")
_INT_RE = r"^(-?[0-9]+)?$"
_SEP = "\x1f"  # ASCII unit separator: never in Criteo data, so one column = one line
_WIDTH = N_FIELDS + 1  # split pieces per row: 40 fields + the unused padding remainder
_PAD = "\t" * N_FIELDS
MAX_SHOWN = 5

_U64 = np.uint64
_FNV_OFFSET = _U64(0xCBF29CE484222325)
_FNV_PRIME = _U64(0x100000001B3)


def list_files(path_or_glob: str | Path) -> list[Path]:
    """Data files under a file, a folder (recursive, data-looking names only) or a glob."""
    text = str(path_or_glob)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and (p.suffix in DATA_SUFFIXES or _DATA_NAME.match(p.name))
        )
        if not found:
            raise DataError(f"{path}: no Criteo data files (*.txt, *.tsv, *.gz, day_N, part-N)")
        return found
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"{text}: glob matches no files")
        return found
    raise DataError(f"{text}: no such file or folder")


@dataclass
class ReaderStats:
    """What one pass read: good rows, malformed rows and where the first ones were."""

    rows: int = 0
    bad_rows: int = 0
    files: int = 0
    first_bad: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.rows} rows from {self.files} file(s), {self.bad_rows} malformed"
        if self.first_bad:
            text += " (first: " + "; ".join(self.first_bad) + ")"
        return text


def mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spreads FNV's weak low bits over all 64 bits."""
    h = h ^ (h >> _U64(30))
    h = h * _U64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> _U64(27))
    h = h * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


def hash_strings(values: pa.Array, slots: np.ndarray, hash_size: int) -> np.ndarray:
    """Stable per-slot bucket in [1, hash_size) for each string; empty string -> bucket 0.

    FNV-1a over the raw bytes (any value works, hex or not), mixed with the slot index: the
    same value in two slots gets unrelated ids.
    """
    arr = values if values.offset == 0 else pa.concat_arrays([values])
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else _NO_BYTES
    return hash_slices(data, offsets[:-1].astype(np.int64), np.diff(offsets), slots, hash_size)


_NO_BYTES = np.zeros(1, np.uint8)
_SLOT_MIX: dict[int, np.ndarray] = {}


def _slot_mix(slots: np.ndarray) -> np.ndarray:
    """``mix64(slot + 1)`` per value, from a small table (a few slots, millions of values)."""
    top = int(slots.max()) + 1 if slots.size else 1
    table = _SLOT_MIX.get(top)
    if table is None:
        table = _SLOT_MIX.setdefault(top, mix64(np.arange(top, dtype=np.uint64) + _U64(1)))
    return table[slots]


def hash_slices(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, slots: np.ndarray, hash_size: int
) -> np.ndarray:
    """:func:`hash_strings` over byte ranges ``data[starts[i]:starts[i] + lengths[i]]``.

    Readers call it on the pieces of a split line directly (no copy of the strings). The
    FNV-1a loop runs one byte position at a time over all values of one length together
    (a CTR column has a handful of lengths: Criteo's are 8 hex digits or empty), so each
    position is two whole-array operations with no masking.
    """
    if hash_size < 2:
        raise ValueError("hash_size must be >= 2 (bucket 0 is reserved for missing)")
    if data.size == 0:
        data = _NO_BYTES
    n = len(starts)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for length in np.flatnonzero(np.bincount(lengths)).tolist():
            if length == 0:
                continue
            every = bool(lengths[0] == length) and bool((lengths == length).all())
            rows = slice(None) if every else np.flatnonzero(lengths == length)
            at = starts[rows]
            part = h if every else h[rows]
            if length <= 64:
                # every value's bytes as one row: a window view of the data, gathered by row
                # (a short memcpy each), never a per-byte index array
                windows = as_strided(data, (data.size - length + 1, length), (1, 1))
                block = windows[at]
                for j in range(length):
                    part ^= block[:, j]
                    part *= _FNV_PRIME
            else:  # rare long values: a byte at a time, never a huge block
                for j in range(length):
                    part ^= data[at + j]
                    part *= _FNV_PRIME
            if not every:
                h[rows] = part
        h = mix64(h ^ _slot_mix(np.asarray(slots, dtype=np.int64)))
    bucket = (h % _U64(hash_size - 1)).astype(np.int64) + 1
    return np.where(lengths == 0, 0, bucket)


def utf8_strings(values: pa.Array, replacement: str | None) -> tuple[pa.Array, np.ndarray]:
    """``values`` (binary) as strings, and which were not UTF-8 (now ``replacement``).

    One cast checks the whole array; only when it fails does a per-value pass find the
    culprits, so clean data costs no more than reading strings directly.
    """
    bad = np.zeros(len(values), dtype=bool)
    try:
        return values.cast(pa.string()), bad
    except pa.ArrowInvalid:
        pass
    for i, v in enumerate(values.to_pylist()):
        if v is not None:
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    fixed = pc.if_else(pa.array(bad), pa.scalar(replacement, pa.binary()), values)
    return fixed.cast(pa.string()), bad


class CriteoReader:
    """Iterable of batches ``{label (B,) int8, dense (B,13) float32, sparse (B,26) int64}``.

    Dense = log(x + 1) for x >= 0, 0 for negative or missing; sparse = per-slot hashed
    bucket in [0, hash_size), 0 = missing. Malformed rows are skipped and counted in
    ``.stats``; with ``max_bad_rows`` set, exceeding it raises DataError naming file:line.
    Each iteration is a fresh pass over the files (stats reset). ``shard=(index, count)``
    reads that byte range of every file, and whole compressed files round-robin.
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
        shard: tuple[int, int] | None = None,
    ) -> None:
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files: list[Path] = [f for item in items for f in list_files(item)]
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if hash_size < 2:
            raise ValueError("hash_size must be >= 2 (bucket 0 is reserved for missing)")
        self.batch_size = batch_size
        self.hash_size = hash_size
        self.max_bad_rows = max_bad_rows
        self.chunk_bytes = chunk_bytes
        self.drop_last = drop_last
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard} must be (index, count) with 0 <= index < count")
        self.shard = shard if shard is not None and shard[1] > 1 else None
        self.stats = ReaderStats()
        # (B, slots) ids -> (B, slots + crosses): data.schema's declared crosses, if any
        self.add_slots: Callable[[np.ndarray], np.ndarray] | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.stats = ReaderStats()
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        for path in self.files:
            self.stats.files += 1
            for chunk in self._read_file(path):
                if self.add_slots is not None:
                    chunk["sparse"] = self.add_slots(chunk["sparse"])
                pending.append(chunk)
                held += len(chunk["label"])
                if held >= self.batch_size:
                    merged = _concat(pending)
                    cut = held - held % self.batch_size
                    for start in range(0, cut, self.batch_size):
                        yield {k: v[start : start + self.batch_size] for k, v in merged.items()}
                    pending = [{k: v[cut:] for k, v in merged.items()}] if cut < held else []
                    held -= cut
        if held and not self.drop_last:
            yield _concat(pending)

    # -- one file ---------------------------------------------------------------------------

    def _read_file(self, path: Path) -> Iterator[dict[str, np.ndarray]]:
        extra_bad: list[tuple[int | None, str]] = []

        def on_invalid(row: pcsv.InvalidRow) -> str:
            # Only a line holding the separator byte lands here; count it, never stop.
            number = None if row.number is None else row.number + offset
            extra_bad.append((number, "contains a \\x1f byte"))
            return "skip"

        source: str | pa.NativeFile = str(path)
        first_line = 1
        if self.shard is not None and _compressed(path):
            # bytes of a compressed stream are no lines: whole files go round-robin instead
            index, count = self.shard
            if self.files.index(path) % count != index:
                return
        elif self.shard is not None:
            part = byte_range(path, *self.shard)
            if part is None:
                return
            source, first_line = part
        offset = first_line - 1  # Arrow numbers the rows of ``source`` from 1
        # Single-threaded: only then does Arrow know the line number of a skipped row (and
        # splitting lines is not what takes the time here).
        read = pcsv.ReadOptions(
            column_names=["line"], block_size=self.chunk_bytes, use_threads=False
        )
        parse = pcsv.ParseOptions(
            delimiter=_SEP,
            quote_char=False,
            escape_char=False,
            double_quote=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        )
        # bytes, not strings: a line that is not UTF-8 is one bad row, not a failed block
        convert = pcsv.ConvertOptions(column_types={"line": pa.binary()}, strings_can_be_null=False)
        try:
            stream = pcsv.open_csv(
                source, read_options=read, parse_options=parse, convert_options=convert
            )
        except (pa.ArrowInvalid, OSError) as exc:
            if "Empty CSV file" in str(exc):
                return
            raise DataError(f"{path}: cannot read near line {first_line}: {exc}") from exc
        while True:
            try:
                batch = stream.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{path}: cannot read near line {first_line}: {exc}") from exc
            skipped = len(extra_bad)
            for number, why in extra_bad:
                self._bad(path, number, why)
            extra_bad.clear()
            lines, not_utf8 = utf8_strings(batch.column(0), "")
            for i in np.flatnonzero(not_utf8):
                self._bad(path, first_line + int(i), "not UTF-8 text")
            if len(lines):
                out = self._parse(path, lines, first_line)
                if out is not None:
                    yield out
            first_line += len(lines) + skipped

    def _parse(self, path: Path, lines: pa.Array, first_line: int) -> dict[str, np.ndarray] | None:
        n = len(lines)
        tabs = pc.count_substring(lines, "\t").to_numpy(zero_copy_only=False)
        empty = pc.equal(pc.binary_length(lines), 0).to_numpy(zero_copy_only=False)
        count_ok = (tabs >= MIN_FIELDS - 1) & (tabs <= N_FIELDS - 1)
        # Appending 40 tabs and splitting at most 40 times gives exactly 41 pieces per row,
        # padding stripped trailing fields with "" (= missing) whatever the field count.
        padded = pc.binary_join_element_wise(lines, _PAD, "")
        pieces = pc.split_pattern(padded, "\t", max_splits=N_FIELDS).flatten()
        base = np.arange(n, dtype=np.int64)[:, None] * _WIDTH

        label_s = pieces.take(pa.array(base[:, 0]))
        is_one = pc.equal(label_s, "1").to_numpy(zero_copy_only=False)
        label_ok = is_one | pc.equal(label_s, "0").to_numpy(zero_copy_only=False)

        dense_s = pieces.take(pa.array((base + np.arange(1, 1 + N_DENSE)).ravel()))
        int_ok = pc.match_substring_regex(dense_s, _INT_RE).to_numpy(zero_copy_only=False)
        present = pc.greater(pc.binary_length(dense_s), 0).to_numpy(zero_copy_only=False)
        int_ok = int_ok.reshape(n, N_DENSE)
        good = count_ok & label_ok & int_ok.all(axis=1)
        bad = ~good & ~empty  # blank lines are skipped silently
        if bad.any():
            for i in np.flatnonzero(bad):
                self._bad(path, first_line + int(i), _why(lines[int(i)].as_py()))
        keep = np.flatnonzero(good)
        if keep.size == 0:
            return None

        usable = present & int_ok.ravel()
        numbers = pc.if_else(pa.array(usable), dense_s, "0")
        raw = pc.cast(numbers, pa.float64()).to_numpy(zero_copy_only=False).reshape(n, N_DENSE)
        huge = ~np.isfinite(raw[keep]).all(axis=1)  # an integer past float range (400 digits)
        if huge.any():
            for i in keep[huge]:
                col = int(np.flatnonzero(~np.isfinite(raw[i]))[0])
                self._bad(path, first_line + int(i), f"I{col + 1} is out of range")
            keep = keep[~huge]
            if keep.size == 0:
                return None
        dense = np.log1p(np.maximum(raw[keep], 0.0)).astype(np.float32)

        # hashed straight from the split pieces' buffers: no copy of 26 strings per row
        sparse_idx = (base[keep] + np.arange(1 + N_DENSE, N_FIELDS)).ravel()
        offsets = np.frombuffer(
            pieces.buffers()[1], dtype=np.int32, count=pieces.offset + len(pieces) + 1
        )[pieces.offset :]
        starts = offsets[sparse_idx]
        data_buf = pieces.buffers()[2]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else _NO_BYTES
        slots = np.tile(np.arange(N_SPARSE), keep.size)
        sparse = hash_slices(
            data, starts.astype(np.int64), offsets[sparse_idx + 1] - starts, slots, self.hash_size
        ).reshape(keep.size, N_SPARSE)

        self.stats.rows += keep.size
        return {"label": is_one[keep].astype(np.int8), "dense": dense, "sparse": sparse}

    def _bad(self, path: Path, line: int | None, why: str) -> None:
        self.stats.bad_rows += 1
        where = f"{path}:{line if line is not None else '?'}"
        if len(self.stats.first_bad) < MAX_SHOWN:
            self.stats.first_bad.append(f"{where}: {why}")
        if self.max_bad_rows is not None and self.stats.bad_rows > self.max_bad_rows:
            raise DataError(
                f"{where}: {why} (more than max_bad_rows={self.max_bad_rows} malformed rows)"
            )


def _compressed(path: Path) -> bool:
    """Whether Arrow decompresses ``path`` (it goes by the suffix)."""
    return path.suffix.lower() in (".gz", ".bz2", ".lz4", ".zst")


def byte_range(path: Path, index: int, count: int) -> tuple[pa.NativeFile, int] | None:
    """Shard ``index`` of ``count`` of a file: whole lines in an equal byte slice, zero-copy.

    Lets several worker processes parse one big file in parallel, each reading only its own
    part. Returns the slice as an Arrow stream plus the file line number it starts at (so
    bad-row reports stay exact), or None when the slice holds no line start.
    """
    mm = pa.memory_map(str(path))
    size = mm.size()
    if size == 0:
        return None
    data = np.frombuffer(mm.read_at(size, 0), dtype=np.uint8)

    def line_start(offset: int) -> int:
        # First line starting at or after ``offset`` (offset 0 always starts a line).
        if offset <= 0:
            return 0
        if offset >= size:
            return size
        newlines = np.flatnonzero(data[offset - 1 :] == 10)
        return size if newlines.size == 0 else offset + int(newlines[0])

    start = line_start(size * index // count)
    stop = line_start(size * (index + 1) // count)
    if stop <= start:
        return None
    first_line = 1 + int(np.count_nonzero(data[:start] == 10))
    return pa.BufferReader(mm.read_at(stop - start, start)), first_line


def _why(line: str) -> str:
    """Human reason a line was rejected (only computed for the rows we report)."""
    fields = line.split("\t")
    if not MIN_FIELDS <= len(fields) <= N_FIELDS:
        return f"expected {N_FIELDS} tab-separated fields, got {len(fields)}"
    if fields[0] not in ("0", "1"):
        return f"label {fields[0]!r} is not 0 or 1"
    for name, value in zip(DENSE_NAMES, fields[1 : 1 + N_DENSE], strict=True):
        if not re.match(_INT_RE, value):
            return f"{name} {value!r} is not an integer"
    return "malformed row"


def _concat(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
