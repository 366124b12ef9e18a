"""The default ctr store: snapshot layers memory-mapped in the serving process.

Why: no server to run, and the OS page cache shares one copy of the table between all the
worker processes of a host; loading a version costs a few mmap calls, not a read of the
table. A new version is made current by building its whole layer list first and then
assigning one attribute, so a lookup (which reads that attribute once) never sees a mix.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2ekit.ctr.kv.base import NotLoadedError, as_keys
from e2ekit.ctr.kv.snapshots import (
    KEYS,
    VALUES,
    Layer,
    open_layer,
    read_manifest,
    version_chain,
)

__all__ = ["MmapStore"]

# Above this many keys a request is deduplicated first: CTR batches repeat keys a lot, and
# a binary search over sorted queries walks the table in order. Below it, np.unique costs
# more than it saves.
UNIQUE_MIN = 512


@dataclass(frozen=True)
class _State:
    version: str
    width: int
    layers: tuple[Layer, ...]  # newest first


def _lookup_layers(state: _State, flat: np.ndarray) -> np.ndarray:
    """Rows for the int64 keys ``flat`` (1-D): the newest layer holding a key wins."""
    out: np.ndarray | None = None
    todo = flat  # until the first layer: positions still without a row, after it
    for layer in state.layers:
        n = layer.keys.shape[0]
        if n == 0:
            continue
        if out is None:  # newest layer: gather every row, then zero the misses
            pos = np.searchsorted(layer.keys, flat)
            np.minimum(pos, n - 1, out=pos)
            hit = layer.keys[pos] == flat
            out = layer.values[pos]
            todo = (~hit).nonzero()[0]
            out[todo] = 0.0
            continue
        if todo.shape[0] == 0:
            break
        query = flat[todo]
        pos = np.searchsorted(layer.keys, query)
        np.minimum(pos, n - 1, out=pos)
        hit = layer.keys[pos] == query
        out[todo[hit]] = layer.values[pos[hit]]
        todo = todo[~hit]
    if out is None:
        return np.zeros((flat.shape[0], state.width), np.float32)
    return out


def _identity(path: Path) -> tuple:
    """What tells a version folder's files apart from a rewrite of them (inode, mtime, size)."""
    ident: list[object] = [str(path.resolve())]
    for name in (KEYS, VALUES):
        try:
            st = os.stat(path / name)
            ident += [st.st_ino, st.st_mtime_ns, st.st_size]
        except OSError:
            ident.append(None)  # open_layer reports what is wrong
    return tuple(ident)


class MmapStore:
    """A :class:`~e2ekit.ctr.kv.base.KVStore` over a snapshot folder's memory-mapped files."""

    def __init__(self, snapshot_folder: str | Path | None = None, version: str | None = None):
        self._state: _State | None = None
        self._load_lock = threading.Lock()
        # opened layers by file identity: a new delta's load maps only the delta
        self._opened: dict[tuple, Layer] = {}
        if snapshot_folder is not None:
            self.load(snapshot_folder, version)

    @property
    def version(self) -> str | None:
        state = self._state
        return state.version if state else None

    @property
    def width(self) -> int:
        state = self._state
        if state is None:
            raise NotLoadedError("no snapshot version loaded yet; call load() first")
        return state.width

    @property
    def layer_paths(self) -> list[Path]:
        """The current version's layer folders, newest first."""
        state = self._state
        return [layer.path for layer in state.layers] if state else []

    def load(self, snapshot_folder: str | Path, version: str | None = None) -> None:
        """Make ``version`` (default: the newest) of ``snapshot_folder`` current.

        On any error the current version stays as it was.
        """
        folder = Path(snapshot_folder)
        with self._load_lock:
            manifest = read_manifest(folder)
            width = int(manifest["width"])
            opened: dict[tuple, Layer] = {}
            built = []
            for entry in version_chain(manifest, version, folder):
                path = folder / entry["dir"]
                ident = _identity(path)
                layer = self._opened.get(ident)
                stale = layer is None or None in ident or layer.values.shape[1] != width
                if stale or layer.keys.shape[0] != entry["rows"]:
                    layer = open_layer(path, width, entry["rows"], entry["name"])
                opened[ident] = layer
                built.append(layer)
            new = _State(version=built[0].name, width=width, layers=tuple(built))
            self._state = new  # the one assignment a concurrent lookup can observe
            self._opened = opened

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """float32 rows of shape ``keys.shape + (width,)``; missing keys get zeros."""
        state = self._state
        if state is None:
            raise NotLoadedError("no snapshot version loaded yet; call load() first")
        q = as_keys(keys)
        flat = q.reshape(-1)
        if flat.shape[0] >= UNIQUE_MIN:
            uniq, inverse = np.unique(flat, return_inverse=True)
            rows = _lookup_layers(state, uniq)[inverse.reshape(-1)]
        else:
            rows = _lookup_layers(state, flat)
        return rows.reshape((*q.shape, state.width))

    def close(self) -> None:
        """Drop the current version (the maps close once no lookup holds them)."""
        with self._load_lock:
            self._state = None
            self._opened = {}
