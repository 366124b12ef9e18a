"""ctr key-value stores: versioned sparse snapshots served embedded or from Redis.

A streaming trainer publishes table versions into a snapshot folder
(:class:`SnapshotWriter`: a base, then deltas); a server opens a store with
:func:`open_store` and calls ``load()`` to swap a new version in without pausing lookups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2ekit.core.errors import E2EError, did_you_mean
from e2ekit.ctr.kv.base import KVStore, NotLoadedError
from e2ekit.ctr.kv.embedded import MmapStore
from e2ekit.ctr.kv.snapshots import SnapshotWriter, layers, read_manifest

__all__ = [
    "KVStore",
    "MmapStore",
    "NotLoadedError",
    "SnapshotWriter",
    "layers",
    "open_store",
    "read_manifest",
]

EMBEDDED = ("embedded", "mmap")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(
    spec: str,
    *,
    snapshot_folder: str | Path | None = None,
    version: str | None = None,
    **options: Any,
) -> KVStore:
    """A store from its spec: ``embedded`` / ``mmap`` (memory-mapped snapshot files, no
    server) or ``redis://host:port[/db]`` (comma-separate several URLs to shard the keys).

    ``snapshot_folder`` loads a version right away; ``options`` go to ``RedisStore``
    (``namespace``, ``refresh_s``, ...).
    """
    text = spec.strip() if isinstance(spec, str) else ""
    store: KVStore
    if text.lower() in EMBEDDED:
        if options:
            raise E2EError(f"the embedded store takes no options, got {sorted(options)}")
        store = MmapStore()
    elif text and all(u.strip().lower().startswith(REDIS_SCHEMES) for u in text.split(",")):
        from e2ekit.ctr.kv.redis_store import RedisStore

        store = RedisStore(text, **options)
    else:
        raise E2EError(
            f"unknown ctr store {spec!r}: use 'embedded' (memory-mapped snapshot files) or "
            "redis://host:port[/db] (comma-separate several URLs for shards)"
            + did_you_mean(text.lower(), EMBEDDED)
        )
    if snapshot_folder is not None:
        try:
            store.load(snapshot_folder, version)
        except BaseException:
            store.close()
            raise
    return store
