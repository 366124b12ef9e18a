"""``data.cache``: every data file parsed once into ``.npy`` columns, then memory-mapped.

TorchRec and the DLRM reference turn Criteo TSV into numpy columns once and train from those;
the text readers re-parse (split, convert, hash) on every pass, and the parse competes with
the training step for the same cores. With ``data.cache: true`` each file of a split is read
once by exactly the reader the config calls for (format, schema, crosses, hash sizes) into an
entry folder holding one ``<key>.npy`` per key of the reader's chunks (``label`` int8,
``dense`` float32 ``(N, dense)``, ``sparse`` int32 when every id fits, else int64) and a
``meta.json``. The folder's name carries a hash of the file's resolved path, size, mtime and
the reader settings, so an edited file or another ``model.hash_size`` gets a new entry and
the same file with the same settings reuses it. An entry is written in a hidden sibling and
renamed into place (:func:`e2ekit.core.cache.cached_folder`): a crashed build leaves nothing
that looks complete, and a reader never sees a half-written entry.

:class:`CachedReader` yields the same chunk dicts as the text readers, so
:class:`~e2ekit.ctr.data.loader.BatchStream` batches, shuffles and prefetches them unchanged;
``shard=(rank, world)`` keeps a contiguous range of rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from e2ekit.core.cache import cached_folder, cached_folder_path
from e2ekit.core.errors import DataError
from e2ekit.core.logs import log
from e2ekit.core.paths import data_cache_dir
from e2ekit.core.progress import progress
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.criteo import MAX_SHOWN, CriteoReader, ReaderStats
from e2ekit.ctr.features import layout_of, schema_of

__all__ = ["CacheEntry", "CachedReader", "cache_root", "cached_entries", "cached_reader"]

# bump when a reader's parsing changes what it yields for the same bytes
PARSER_VERSION = 1
FOLDER = "ctr-parsed"
META = "meta.json"
BUILD_ROWS = 65536  # rows per chunk while building (fewer, larger writes)
_HEADER_BYTES = 128  # reserved .npy header: the row count is known only at the end
_INT32_MAX = np.iinfo(np.int32).max
_INT32_MIN = np.iinfo(np.int32).min
_COPY_ROWS = 1 << 20
_FORMATS = ("criteo", "criteo_csv", "slots")  # open_reader's names (the rest: data.schema)


def cache_root(cfg: CtrConfig) -> Path:
    """``data.cache_dir``, else ``<data cache>/ctr-parsed`` (``$E2EKIT_DATA`` or
    ``~/.cache/e2ekit/data``, where the built-in data live too)."""
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    return data_cache_dir() / FOLDER


def _format_name(reader: CriteoReader) -> str:
    """The format a reader parses (``auto`` already resolved by sniffing the first file)."""
    from e2ekit.ctr.data.formats import CriteoCSVReader, SlotReader

    if isinstance(reader, CriteoCSVReader):
        return "criteo_csv"
    if isinstance(reader, SlotReader):
        return "slots"
    if type(reader) is CriteoReader:
        return "criteo"
    return type(reader).__name__  # data.schema columns: the delimited reader


def reader_settings(cfg: CtrConfig, reader: CriteoReader) -> dict[str, Any]:
    """Every setting that changes the values a reader yields for the same bytes."""
    schema = schema_of(cfg)
    return {
        "parser_version": PARSER_VERSION,
        "format": _format_name(reader),
        "hash_size": cfg.model.hash_size,
        "slot_hash": list(layout_of(cfg).slot_hash),
        "schema": schema.model_dump(mode="json"),
        "slot_names": list(getattr(reader, "slot_names", []) or []),
    }


@dataclass(frozen=True)
class CacheEntry:
    """One parsed file: its folder and ``meta.json``."""

    folder: Path
    meta: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns, memory-mapped read-only (nothing is read until it is used)."""
        return {
            key: np.load(self.folder / f"{key}.npy", mmap_mode="r") for key in self.meta["keys"]
        }


# -- building ---------------------------------------------------------------------------------


class _NpyColumn:
    """One ``.npy`` file written chunk by chunk, its header filled in when the rows are known.

    An int64 column is stored as int32 while every value fits and widened (rewritten once)
    the first time one does not.
    """

    def __init__(self, path: Path, first: np.ndarray) -> None:
        self.path = path
        self.inner = tuple(first.shape[1:])
        self.dtype = np.dtype(np.int32) if first.dtype == np.int64 else first.dtype
        self.source = first.dtype
        self.rows = 0
        self.fh: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in finish/close)
        self.fh.write(b"\0" * _HEADER_BYTES)

    def append(self, arr: np.ndarray) -> None:
        if tuple(arr.shape[1:]) != self.inner or arr.dtype != self.source:
            raise DataError(
                f"{self.path.stem}: the reader yielded {arr.dtype}{arr.shape[1:]} after "
                f"{self.source}{self.inner}; cannot store it as one column"
            )
        if self.dtype == np.int32 and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < _INT32_MIN or hi > _INT32_MAX:
                self._widen()
        np.ascontiguousarray(arr, dtype=self.dtype).tofile(self.fh)
        self.rows += len(arr)

    def _widen(self) -> None:
        """Rewrite what is stored so far as int64 (a value past int32 arrived)."""
        self.fh.close()
        old = np.memmap(
            self.path, np.int32, "r", offset=_HEADER_BYTES, shape=(self.rows, *self.inner)
        )
        wide_path = self.path.with_suffix(".wide")
        with open(wide_path, "wb") as out:
            out.write(b"\0" * _HEADER_BYTES)
            for start in range(0, self.rows, _COPY_ROWS):
                np.asarray(old[start : start + _COPY_ROWS], dtype=np.int64).tofile(out)
        del old
        os.replace(wide_path, self.path)
        self.fh = open(self.path, "r+b")  # noqa: SIM115 (not "ab": the header is written last)
        self.fh.seek(0, os.SEEK_END)
        self.dtype = np.dtype(np.int64)

    def finish(self) -> dict[str, Any]:
        """Write the header (rows now known) and close; returns the column's description."""
        shape = (self.rows, *self.inner)
        header = repr(
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": shape,
            }
        )
        body = _HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
        if len(header) + 1 > body:
            raise DataError(f"{self.path.name}: header {header!r} does not fit")
        text = (header + " " * (body - len(header) - 1) + "\n").encode("latin1")
        self.fh.seek(0)
        self.fh.write(b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text)
        self.fh.close()
        return {"dtype": self.dtype.name, "shape": list(shape)}

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()


def _safe_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:48] or "file"


def _source_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _build(
    folder: Path,
    reader: CriteoReader,
    source: dict[str, Any],
    settings: dict[str, Any],
    final: Path,
    *,
    bar_enabled: bool,
) -> None:
    """Parse ``reader`` (one file) into ``folder``, published later as ``final``: a
    ``<key>.npy`` per chunk key, then ``meta.json``."""
    from e2ekit.ctr.data.splits import estimate_rows

    path = Path(source["path"])
    columns: dict[str, _NpyColumn] = {}
    t0 = time.perf_counter()
    bar = progress(
        total=estimate_rows(str(path)),
        desc=f"parse {path.name}",
        unit="row",
        unit_scale=True,
        enabled=bar_enabled,
    )
    try:
        for chunk in reader:
            n = len(chunk["label"])
            if n == 0:
                continue
            for key, arr in chunk.items():
                if key not in columns:
                    columns[key] = _NpyColumn(folder / f"{key}.npy", arr)
                columns[key].append(arr)
            bar.update(n)
        keys = {key: col.finish() for key, col in columns.items()}
    finally:
        bar.close()
        for col in columns.values():
            col.close()
    if _source_key(path) != source:
        raise DataError(f"{path} changed while it was parsed into the cache; run again")
    seconds = time.perf_counter() - t0
    stats = reader.stats
    meta = {
        "rows": stats.rows,
        "bad_rows": stats.bad_rows,
        "first_bad": list(stats.first_bad),
        "source": source,
        "settings": settings,
        "keys": keys,
        "build_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")  # last: marks it complete
    log.info(
        "data.cache: parsed %d rows in %.1fs (%.0f rows/s): %s -> %s",
        stats.rows,
        seconds,
        stats.rows / max(seconds, 1e-9),
        path,
        final,
    )


def _build_file(
    folder: Path,
    *,
    cfg: CtrConfig,
    file: Path,
    fmt: str,
    source: dict[str, Any],
    settings: dict[str, Any],
    final: Path,
) -> None:
    """Parse ``file`` with the config's reader (``fmt`` as resolved for the split)."""
    from e2ekit.ctr.data.splits import open_schema_reader

    reader = open_schema_reader(
        cfg, str(file), batch_size=BUILD_ROWS, format=fmt if fmt in _FORMATS else None
    )
    _build(folder, reader, source, settings, final, bar_enabled=cfg.train.progress)


def cached_entries(
    cfg: CtrConfig,
    paths: str | list[str],
    *,
    announce: bool = False,
    probe: CriteoReader | None = None,
) -> list[CacheEntry]:
    """The cache entry of every file of ``paths``, parsing the files that have none.

    ``announce``: log one line for each reused entry too (builds always log). The config's
    ``data.max_bad_rows`` holds for the whole split, as when the text is read directly: a
    split over the limit fails with the text reader's own message. ``probe``: the text
    reader of ``paths`` (its file list and resolved format are the ones used), if at hand.
    """
    from e2ekit.ctr.data.splits import open_schema_reader

    root = cache_root(cfg)
    if probe is None:  # the file list and format the text path uses
        probe = open_schema_reader(cfg, paths)
    settings = reader_settings(cfg, probe)
    fmt = settings["format"]
    limit = cfg.data.max_bad_rows
    entries: list[CacheEntry] = []
    bad_so_far = 0
    for file in probe.files:
        source = _source_key(Path(file))
        key = {**source, "settings": settings}
        name = _safe_name(Path(file))
        final = cached_folder_path(root, name, key)
        reused = (final / META).is_file()

        build = partial(
            _build_file,
            cfg=cfg,
            file=Path(file),
            fmt=fmt,
            source=source,
            settings=settings,
            final=final,
        )
        try:
            folder = cached_folder(root, name, key, build, marker=META)
        except DataError as exc:
            if limit is not None and "max_bad_rows" in str(exc):
                _raise_split_error(cfg, paths)
            raise
        entry = CacheEntry(folder, json.loads((folder / META).read_text()))
        if not reused:
            _remove_outdated(root, name, source)
        if reused and announce:
            log.info("data.cache: reusing %d parsed rows of %s (%s)", entry.rows, file, folder.name)
        bad_so_far += int(entry.meta["bad_rows"])
        if limit is not None and bad_so_far > limit:
            _raise_split_error(cfg, paths)
        entries.append(entry)
    return entries


def _remove_outdated(root: Path, name: str, source: dict[str, Any]) -> None:
    """Remove the entries of an earlier version of ``source``'s file (another size or mtime):
    no lookup can reach them again. Entries of the current file with other settings stay."""
    for folder in root.glob(f"{name}-*"):
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            continue  # not a complete entry (another process may be publishing it)
        old = meta.get("source", {})
        if old.get("path") == source["path"] and old != source:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("data.cache: removed %s (parsed from an earlier version of the file)", folder)


def _raise_split_error(cfg: CtrConfig, paths: str | list[str]) -> None:
    """Read the split as text up to its (max_bad_rows + 1)-th bad row: the same error,
    file:line and message as training from the text would give."""
    from e2ekit.ctr.data.splits import open_schema_reader

    for _ in open_schema_reader(cfg, paths):
        pass
    raise DataError(  # the text reader stops first; this only guards a changed file
        f"data.max_bad_rows={cfg.data.max_bad_rows}: the parsed cache of {paths} holds more "
        "malformed rows than that"
    )


def cached_reader(
    cfg: CtrConfig, paths: str | list[str], *, chunk_rows: int | None = None
) -> CachedReader:
    """A :class:`CachedReader` over the entries of ``paths`` (parsed first where missing).

    Chunks default to the text reader's rows per chunk, so an unsharded pass rebatches and
    shuffles exactly as one from the text.
    """
    from e2ekit.ctr.data.splits import open_schema_reader

    probe = open_schema_reader(cfg, paths)
    entries = cached_entries(cfg, paths, probe=probe)
    rows = chunk_rows or probe.batch_size
    return CachedReader(entries, chunk_rows=rows, chunk_bytes=probe.chunk_bytes)


class CachedReader:
    """Iterable of the parsed chunk dicts of cache entries, in file order.

    Chunks hold ``chunk_rows`` rows, cut across file boundaries (the last one shorter), as
    :class:`~e2ekit.ctr.data.criteo.CriteoReader` cuts them. ``shard=(index, count)`` keeps
    the contiguous rows ``[N * index // count, N * (index + 1) // count)`` of all ``N``
    rows. ``.stats`` counts the rows yielded and reports the malformed rows the entries'
    parse skipped (on shard 0 only, so summed shard stats count each once).
    """

    def __init__(
        self,
        entries: Sequence[CacheEntry],
        *,
        chunk_rows: int = 4096,
        chunk_bytes: int = 16 << 20,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.entries = list(entries)
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes  # BatchStream's prefetch bound per block
        self.shard = shard
        self.files = [Path(e.meta["source"]["path"]) for e in self.entries]
        self.stats = ReaderStats()

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.entries)

    def _range(self) -> tuple[int, int]:
        total = self.rows
        if self.shard is None or self.shard[1] <= 1:
            return 0, total
        index, count = self.shard
        if not 0 <= index < count:
            raise ValueError(f"shard {self.shard} must be (index, count) with 0 <= index < count")
        return total * index // count, total * (index + 1) // count

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.stats = ReaderStats(files=len(self.entries))
        if self.shard is None or self.shard[0] == 0:
            self.stats.bad_rows = sum(int(e.meta["bad_rows"]) for e in self.entries)
            first = [b for e in self.entries for b in e.meta.get("first_bad", [])]
            self.stats.first_bad = first[:MAX_SHOWN]
        lo, hi = self._range()
        starts = np.cumsum([0] + [e.rows for e in self.entries])
        opened: dict[int, dict[str, np.ndarray]] = {}
        for begin in range(lo, hi, self.chunk_rows):
            end = min(begin + self.chunk_rows, hi)
            parts = []
            i = int(np.searchsorted(starts, begin, side="right")) - 1
            while i < len(self.entries) and starts[i] < end:
                a, b = max(begin, int(starts[i])), min(end, int(starts[i + 1]))
                if a < b:
                    if i not in opened:
                        opened = {i: self.entries[i].arrays()}  # earlier files are done with
                    off = int(starts[i])
                    parts.append({k: v[a - off : b - off] for k, v in opened[i].items()})
                i += 1
            chunk = (
                parts[0]
                if len(parts) == 1
                else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            )
            self.stats.rows += end - begin
            yield chunk
