"""Versioned sparse snapshots: a full base table plus deltas, published atomically.

Why: a streaming trainer publishes a new table version every few minutes; writing the whole
table each time (tens of millions of rows) is wasteful when only the rows trained since the
last version changed. So a version is either a ``base`` (every row) or a ``delta`` (the rows
changed since its parent); a reader stacks a version's delta chain on its base, newest first.

Layout (``<folder>/manifest.json``, ``format: e2ekit-ctr-snapshots``, ``format_version: 1``)::

    manifest.json   {"format", "format_version", "width", "versions": [
                       {"name", "kind": "base"|"delta", "parent", "dir", "rows", "created",
                        "digest", "meta"}, ...]}   oldest first; a delta's parent before it
    v-<name>/keys.npy     int64 (N,), sorted ascending, unique (key = slot * hash_size + bucket)
    v-<name>/values.npy   float32 (N, width); row i is the vector of key i

A base's ``parent``, when set, only names the version it was compacted from. ``digest``
(BLAKE2b of the two arrays' bytes) tells two versions of the same name apart without
reading them (a shared store refuses to mix them up).

A version folder is staged under a hidden name, its files fsynced, then renamed into place;
the manifest is rewritten (atomically) last, so a reader never sees a version that is not
whole. One writer per folder; any number of readers. A delta cannot delete a key (a trainer
never forgets a row it touched); with ``compact_every=N``, the write after ``N`` deltas in a
row is a base holding the merged table instead, so a chain never has more than ``N`` deltas.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError, E2EError, did_you_mean
from e2ekit.core.fileio import atomic_open, atomic_write_json, replace_folder

__all__ = [
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "Layer",
    "SnapshotWriter",
    "check_name",
    "layers",
    "open_layer",
    "read_manifest",
    "version_chain",
]

SNAPSHOT_FORMAT = "e2ekit-ctr-snapshots"
SNAPSHOT_VERSION = 1
MANIFEST = "manifest.json"
KEYS = "keys.npy"
VALUES = "values.npy"
# Version names become folder names and Redis key parts: no separators, no glob characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: object, what: str = "version") -> str:
    """``name`` if it is a valid version (or namespace) name, else a clear error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise E2EError(
            f"{what} name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of a snapshot folder; a ``DataError`` naming the file otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; {folder} is not a ctr snapshot folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path}: format {got!r} is not {SNAPSHOT_FORMAT}")
    fv = manifest.get("format_version")
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise DataError(f"{path}: format_version {fv!r} is not a positive integer")
    if fv > SNAPSHOT_VERSION:
        raise DataError(
            f"{path}: format_version {fv} is newer than this e2ekit reads ({SNAPSHOT_VERSION})"
        )
    width = manifest.get("width")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise DataError(f"{path}: width {width!r} is not a positive integer")
    versions = manifest.get("versions")
    if not isinstance(versions, list):
        raise DataError(f"{path}: 'versions' is not a list")
    seen: set[str] = set()
    for i, entry in enumerate(versions):
        where = f"{path}: versions[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DataError(f"{where}: name {name!r} is not a valid version name")
        if name in seen:
            raise DataError(f"{where}: version {name!r} appears twice")
        kind, parent = entry.get("kind"), entry.get("parent")
        if kind not in ("base", "delta"):
            raise DataError(f"{where} ({name}): kind {kind!r} is not 'base' or 'delta'")
        if kind == "delta" and parent not in seen:
            raise DataError(
                f"{where} ({name}): parent {parent!r} is not a version listed before it"
            )
        d = entry.get("dir")
        if not isinstance(d, str) or not _NAME.fullmatch(d):
            raise DataError(f"{where} ({name}): dir {d!r} is not a plain folder name")
        rows = entry.get("rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise DataError(f"{where} ({name}): rows {rows!r} is not a count")
        seen.add(name)
    return manifest


def version_chain(
    manifest: dict[str, Any], version: str | None = None, folder: str | Path = "snapshots"
) -> list[dict[str, Any]]:
    """The manifest entries a version reads, newest first: it, its parents, down to a base.

    ``version=None`` is the newest version. Expects a manifest checked by ``read_manifest``;
    ``folder`` only names it in errors.
    """
    entries = {e["name"]: e for e in manifest["versions"]}
    if not entries:
        raise DataError(f"{Path(folder) / MANIFEST}: no version published yet")
    if version is None:
        version = manifest["versions"][-1]["name"]
    if version not in entries:
        raise E2EError(
            f"{folder}: no snapshot version {version!r} (have: {', '.join(entries)})"
            + did_you_mean(str(version), entries)
        )
    chain = [entries[version]]
    while chain[-1]["kind"] == "delta":
        chain.append(entries[chain[-1]["parent"]])
    return chain


def layers(folder: str | Path, version: str | None = None) -> list[Path]:
    """The version folders ``version`` (default: the newest) reads, newest first: the
    version, its delta chain, down to its base."""
    folder = Path(folder)
    return [folder / e["dir"] for e in version_chain(read_manifest(folder), version, folder)]


@dataclass(frozen=True)
class Layer:
    """One version folder's arrays (memory-mapped), checked against the manifest."""

    name: str
    path: Path
    keys: np.ndarray
    values: np.ndarray


def open_layer(path: Path, width: int, rows: int | None = None, name: str = "") -> Layer:
    """Memory-map a version folder's ``keys.npy`` and ``values.npy`` and check them:
    dtypes, shapes, ``width``, ``rows`` and strictly ascending keys (the lookup's binary
    search is silently wrong otherwise)."""
    kpath, vpath = path / KEYS, path / VALUES
    arrays = []
    for p in (kpath, vpath):
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{p}: missing; the snapshot version is incomplete") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{p}: not a readable .npy array ({exc})") from None
        # a plain ndarray view: numpy's memmap subclass adds overhead to every operation
        arrays.append(arr.view(np.ndarray))
    keys, values = arrays
    if keys.dtype != np.int64 or keys.ndim != 1:
        raise DataError(f"{kpath}: {keys.dtype} {keys.shape}, expected int64 (N,)")
    if values.dtype != np.float32 or values.ndim != 2:
        raise DataError(f"{vpath}: {values.dtype} {values.shape}, expected float32 (N, width)")
    if values.shape[1] != width:
        raise DataError(f"{vpath}: width {values.shape[1]} does not match the manifest's {width}")
    if values.shape[0] != keys.shape[0]:
        raise DataError(f"{vpath}: {values.shape[0]} rows but {kpath.name} has {keys.shape[0]}")
    if rows is not None and keys.shape[0] != rows:
        raise DataError(f"{kpath}: {keys.shape[0]} rows but the manifest says {rows}")
    if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise DataError(f"{kpath}: keys are not sorted ascending and unique")
    return Layer(name=name or path.name, path=path, keys=keys, values=values)


def _rows(keys: Any, values: Any, width: int | None, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``keys``/``values`` as sorted unique int64 keys and float32 rows; errors that name
    the snapshot folder being written."""
    k = np.asarray(keys)
    v = np.asarray(values)
    if k.ndim != 1 or (k.size and k.dtype.kind not in "iu"):
        raise DataError(f"{folder}: keys must be a 1-D integer array, got {k.dtype} {k.shape}")
    if v.ndim != 2 or v.shape[0] != k.shape[0]:
        n = k.shape[0]
        raise DataError(f"{folder}: values must be ({n}, width) for {n} keys, not {v.shape}")
    if v.size and v.dtype.kind not in "fiu":
        raise DataError(f"{folder}: values must be numbers, got {v.dtype}")
    if width is not None and v.shape[1] != width:
        raise DataError(f"{folder}: values have width {v.shape[1]}; the folder's width is {width}")
    if v.shape[1] < 1:
        raise DataError(f"{folder}: values must have at least one column")
    k = k.astype(np.int64)
    v = v.astype(np.float32)
    if not np.all(np.isfinite(v)):
        raise DataError(f"{folder}: values hold NaN or infinity; refusing to publish them")
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    if k.size > 1 and not np.all(k[1:] > k[:-1]):
        dup = int(k[1:][k[1:] == k[:-1]][0])
        raise DataError(f"{folder}: key {dup} appears more than once")
    return np.ascontiguousarray(k), np.ascontiguousarray(v)


def _digest(keys: np.ndarray, values: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in (keys, values):
        if arr.size:  # a memoryview of an empty array cannot be cast to bytes
            h.update(memoryview(arr).cast("B"))
    return f"blake2b-128:{h.hexdigest()}"


class SnapshotWriter:
    """Publish base and delta versions into a snapshot folder (one writer per folder)."""

    def __init__(self, folder: str | Path, *, compact_every: int | None = None) -> None:
        if compact_every is not None and compact_every < 1:
            raise E2EError(f"compact_every must be >= 1 or None, got {compact_every}")
        self.folder = Path(folder)
        self.compact_every = compact_every

    def manifest(self) -> dict[str, Any] | None:
        """The current manifest, or None for a folder with none yet."""
        if not (self.folder / MANIFEST).exists():
            return None
        return read_manifest(self.folder)

    def write_base(
        self, keys: Any, values: Any, version: str, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Publish a full table as ``version``; returns its manifest entry."""
        manifest = self.manifest()
        k, v = _rows(keys, values, manifest["width"] if manifest else None, self.folder)
        return self._publish(manifest, k, v, version, "base", None, meta)

    def write_delta(
        self, keys: Any, values: Any, version: str, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Publish the rows changed since the newest version as ``version`` (its parent).

        With ``compact_every`` reached, a base of the merged table is written instead.
        """
        manifest = self.manifest()
        if manifest is None or not manifest["versions"]:
            raise E2EError(f"{self.folder}: no base version yet; write_base comes first")
        k, v = _rows(keys, values, manifest["width"], self.folder)
        chain = version_chain(manifest, None, self.folder)
        parent = chain[0]["name"]
        if self.compact_every is not None and len(chain) - 1 >= self.compact_every:
            k, v = self._merged(manifest, chain, k, v)
            return self._publish(manifest, k, v, version, "base", parent, meta)
        return self._publish(manifest, k, v, version, "delta", parent, meta)

    def _merged(
        self, manifest: dict[str, Any], chain: list[dict[str, Any]], k: np.ndarray, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole table the chain plus these rows make: for each key, the newest row."""
        width = manifest["width"]
        opened = [open_layer(self.folder / e["dir"], width, e["rows"], e["name"]) for e in chain]
        all_keys = np.concatenate([k, *(layer.keys for layer in opened)])
        all_values = np.concatenate([v, *(layer.values for layer in opened)])
        # np.unique's index is each key's first occurrence: the newest layer holding it
        keys, first = np.unique(all_keys, return_index=True)
        return keys, np.ascontiguousarray(all_values[first])

    def _publish(
        self,
        manifest: dict[str, Any] | None,
        keys: np.ndarray,
        values: np.ndarray,
        version: str,
        kind: str,
        parent: str | None,
        meta: dict[str, Any] | None,
    ) -> dict[str, Any]:
        check_name(version)
        if manifest is None:
            manifest = {
                "format": SNAPSHOT_FORMAT,
                "format_version": SNAPSHOT_VERSION,
                "width": int(values.shape[1]),
                "versions": [],
            }
        if any(e["name"] == version for e in manifest["versions"]):
            raise E2EError(f"{self.folder}: version {version!r} exists already")
        try:
            json.dumps(meta or {}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise E2EError(f"meta of version {version!r} is not plain JSON ({exc})") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"v-{version}"
        staged = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.folder))
        try:
            for file, arr in ((KEYS, keys), (VALUES, values)):
                with atomic_open(staged / file, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
            replace_folder(staged, self.folder / name)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        entry = {
            "name": version,
            "kind": kind,
            "parent": parent,
            "dir": name,
            "rows": int(keys.shape[0]),
            "digest": _digest(keys, values),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "meta": meta or {},
        }
        manifest["versions"].append(entry)
        atomic_write_json(self.folder / MANIFEST, manifest, allow_nan=False)
        return entry

    def prune(self, keep: int) -> list[str]:
        """Remove versions that none of the newest ``keep`` versions reads; their names.

        The manifest is rewritten first, so a reader never finds a listed version missing;
        a reader that memory-mapped a removed version keeps its (unlinked) files.
        """
        if keep < 1:
            raise E2EError(f"keep must be >= 1, got {keep}")
        manifest = self.manifest()
        if manifest is None:
            return []
        needed: set[str] = set()
        for entry in manifest["versions"][-keep:]:
            needed.update(e["name"] for e in version_chain(manifest, entry["name"], self.folder))
        gone = [e for e in manifest["versions"] if e["name"] not in needed]
        if not gone:
            return []
        manifest["versions"] = [e for e in manifest["versions"] if e["name"] in needed]
        atomic_write_json(self.folder / MANIFEST, manifest, allow_nan=False)
        for entry in gone:
            shutil.rmtree(self.folder / entry["dir"], ignore_errors=True)
        return [e["name"] for e in gone]
