"""What every ctr key-value store offers a server: lookup, and an atomic version swap.

Why a protocol: serving code should not care whether rows come from memory-mapped snapshot
files in the process or from a Redis cluster shared by many servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from e2ekit.core.errors import DataError, E2EError

__all__ = ["KVStore", "NotLoadedError", "as_keys"]


class NotLoadedError(E2EError):
    """A lookup before any version was loaded (or published, for a shared store)."""


@runtime_checkable
class KVStore(Protocol):
    """A key -> float32 row store holding one table version at a time.

    ``lookup(keys)`` takes int64 keys of any shape and returns float32 rows of shape
    ``keys.shape + (width,)``; a key the version does not hold gets zeros.
    ``load(folder, version=None)`` makes a snapshot version (default: the newest) current
    atomically: a lookup running meanwhile answers wholly from the old version or wholly
    from the new one, never a mix, and never fails because of the swap.
    """

    @property
    def width(self) -> int: ...

    @property
    def version(self) -> str | None: ...

    def lookup(self, keys: np.ndarray) -> np.ndarray: ...

    def load(self, snapshot_folder: str | Path, version: str | None = None) -> None: ...

    def close(self) -> None: ...


def as_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` as an int64 array; a ``DataError`` for anything that is not integers."""
    arr = np.asarray(keys)
    if arr.size and arr.dtype.kind not in "iu":
        raise DataError(f"lookup keys must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)
