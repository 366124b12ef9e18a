"""A ctr store in Redis (one instance or several shards), shared by many servers.

Why: when a table outgrows one host's memory, or many servers must follow one streaming
trainer, the rows live in Redis. Layout, for namespace ``ns``:

- ``ns:<version>:<key>``: the row of int ``key`` in version (layer) ``<version>``, as
  ``width`` little-endian float32 (``4 * width`` bytes). Each key lives on one shard, chosen
  by a stable hash of the int key (SplitMix64 finaliser, modulo the shard count).
- ``ns:<version>:layer``: written on every shard once all of that version's rows are in
  (JSON: rows, width, kind, parent, created, digest, shards); a load skips a version that
  has it, and refuses one of the same name whose fields differ.
- ``ns:current``: the current version on every shard, JSON ``{"version", "layers": [newest
  .. base], "width", "shards"}``. Set after every layer it names is written, so a server
  that reads it can serve it.
- ``ns:layers`` (shard 0): a sorted set of the layers this namespace holds, each scored by
  ``ns:seq`` (a counter) when it was first written, so layers can be told apart by age
  without reading a snapshot folder; :meth:`RedisStore.prune` drops the old ones.

A lookup sends one MGET per shard covering every layer of the current chain (newest first)
and those layers' markers, and takes, per key, the first layer that has it; a key no layer has
gets zeros. A marker missing from that MGET means the shard lost the layer (a restart without
persistence, FLUSHALL, a drop): its misses would be zeros that are not in the table, so the
store re-publishes the chain it loaded from its snapshot folder and looks up again, or raises
:class:`RedisUnavailableError` / :class:`~e2ekit.core.errors.E2EError`; never zeros. Each store
keeps the chain in memory and re-reads ``ns:current`` (one GET) at most every ``refresh_s``
seconds, so servers follow the version a trainer publishes. Shards are queried one after
another (one round trip each).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError, E2EError, ServiceUnavailable
from e2ekit.core.logs import log
from e2ekit.ctr.kv.base import NotLoadedError, as_keys
from e2ekit.ctr.kv.snapshots import check_name, open_layer, read_manifest, version_chain

__all__ = ["RedisStore", "RedisUnavailableError", "shard_of"]

DEFAULT_NAMESPACE = "e2ekit-ctr"
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0..shards-1) of each int64 key: stable across processes and machines."""
    h = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    h ^= h >> np.uint64(30)
    h *= _C1
    h ^= h >> np.uint64(27)
    h *= _C2
    h ^= h >> np.uint64(31)
    return (h % np.uint64(shards)).astype(np.intp)


class RedisUnavailableError(ServiceUnavailable):
    """A shard cannot be reached (down, restarting, timing out): retry later."""


@dataclass(frozen=True)
class _Source:
    """Where this store's loaded chain came from, to publish it again if Redis loses it."""

    folder: Path
    entries: tuple[dict[str, Any], ...]  # newest first
    width: int

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(e["name"] for e in self.entries)


@dataclass(frozen=True)
class _State:
    version: str
    width: int
    layers: tuple[str, ...]  # newest first
    prefixes: tuple[str, ...]  # "ns:<layer>:" per layer
    raw: bytes  # the pointer as stored, to tell a changed one cheaply


def _urls(urls: str | Sequence[str]) -> list[str]:
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = [u.strip() for u in items if u.strip()]
    if not out:
        raise E2EError("RedisStore needs at least one redis:// URL")
    return out


class RedisStore:
    """A :class:`~e2ekit.ctr.kv.base.KVStore` in Redis; several URLs shard the keys."""

    def __init__(
        self,
        urls: str | Sequence[str],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        refresh_s: float = 1.0,
        chunk_rows: int = 20_000,
        timeout_s: float = 10.0,
    ) -> None:
        import redis

        self._redis = redis
        self.urls = _urls(urls)
        self.namespace = check_name(namespace, "namespace")
        self.refresh_s = float(refresh_s)
        self.chunk_rows = max(1, int(chunk_rows))
        self._pointer = f"{self.namespace}:current"
        self._registry = f"{self.namespace}:layers"
        self._seq = f"{self.namespace}:seq"
        self._replaced: tuple[str, ...] = ()  # the chain ns:current named before our load
        self._clients = []
        for url in self.urls:
            try:
                client = redis.Redis.from_url(
                    url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
                )
            except ValueError as exc:
                raise E2EError(f"{url!r} is not a Redis URL ({exc})") from None
            self._clients.append(client)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._state: _State | None = None
        self._source: _Source | None = None  # what load() wrote, for re-publishing
        self._checked = time.monotonic()
        raw = self._call(0, lambda c: c.get(self._pointer))
        if raw is not None:
            self._state = self._parse_pointer(raw, strict=True)

    # -- helpers ---------------------------------------------------------------------------

    def _call(self, shard: int, fn: Any) -> Any:
        """``fn(client)`` on one shard; a connection failure as an error naming the URL."""
        try:
            return fn(self._clients[shard])
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError) as exc:
            raise RedisUnavailableError(f"{self.urls[shard]}: cannot reach Redis ({exc})") from None

    def _parse_pointer(self, raw: bytes, *, strict: bool) -> _State | None:
        """The chain ``ns:current`` names; on a malformed one an error (``strict``) or a
        warning and None (a serving store keeps its version rather than failing)."""
        try:
            doc = json.loads(raw)
            layers = tuple(check_name(x) for x in doc["layers"])
            width, shards = int(doc["width"]), int(doc["shards"])
            version = check_name(doc["version"])
            if not layers or layers[0] != version or width < 1:
                raise ValueError("empty chain, or the chain does not start at its version")
        except (ValueError, KeyError, TypeError, E2EError) as exc:
            msg = f"{self.urls[0]}: {self._pointer} is not a valid version pointer ({exc})"
            if strict:
                raise DataError(msg) from None
            log.warning(msg)
            return None
        if shards != len(self._clients):
            msg = (
                f"{self.urls[0]}: {self._pointer} was written for {shards} shard(s); this "
                f"store has {len(self._clients)}, so it would look keys up on the wrong shards"
            )
            if strict:
                raise E2EError(msg)
            log.warning(msg)
            return None
        prefixes = tuple(f"{self.namespace}:{name}:" for name in layers)
        return _State(version, width, layers, prefixes, bytes(raw))

    def _current(self) -> _State:
        """The current chain, re-read from Redis when ``refresh_s`` has passed."""
        state = self._state
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            raw = self._call(0, lambda c: c.get(self._pointer))
            if raw is not None and (state is None or raw != state.raw):
                new = self._parse_pointer(raw, strict=False)
                if new is not None:
                    with self._lock:  # a load() that finished meanwhile wins
                        if self._state is state:
                            self._state = new
                    state = self._state
        if state is None:
            raise NotLoadedError(
                f"no version in Redis namespace {self.namespace!r} yet; call load() first"
            )
        return state

    # -- KVStore ---------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        state = self._state
        return state.version if state else None

    @property
    def width(self) -> int:
        return self._current().width

    @property
    def layers(self) -> list[str]:
        """The current chain's versions, newest first."""
        state = self._state
        return list(state.layers) if state else []

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """float32 rows of shape ``keys.shape + (width,)``; missing keys get zeros.

        A chain Redis lost is published again and the lookup retried once; an unreachable
        shard raises :class:`RedisUnavailableError`."""
        q = as_keys(keys)
        uniq, inverse = np.unique(q.reshape(-1), return_inverse=True)
        for attempt in range(2):
            state = self._current()
            out, lost = self._gather(state, uniq)
            if not lost:
                return out[inverse.reshape(-1)].reshape((*q.shape, state.width))
            self._restore(state, lost, final=attempt == 1)
        raise AssertionError("unreachable")  # _restore raises on the final attempt

    def _gather(self, state: _State, uniq: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The rows of ``uniq`` and the layers some shard asked lacks the marker of (then
        the rows are not to be trusted). One MGET per shard: rows and markers are read
        atomically, so a present marker means that shard held the whole layer."""
        out = np.zeros((uniq.shape[0], state.width), np.float32)
        n = len(self._clients)
        shard = shard_of(uniq, n) if n > 1 else None
        markers = [p + "layer" for p in state.prefixes]
        lost: set[str] = set()
        for s in range(n):
            idx = np.arange(uniq.shape[0]) if shard is None else (shard == s).nonzero()[0]
            if idx.shape[0] == 0:
                continue
            ks = [str(k) for k in uniq[idx].tolist()]
            names = [p + k for p in state.prefixes for k in ks] + markers
            got = self._call(s, lambda c, names=names: c.mget(names))
            tail = got[len(got) - len(markers) :]
            missing = {name for name, v in zip(state.layers, tail, strict=True) if v is None}
            if missing:
                lost |= missing
                continue
            self._fill(out, idx, got[: len(got) - len(markers)], state, ks)
        return out, [name for name in state.layers if name in lost]

    def _restore(self, state: _State, lost: list[str], *, final: bool) -> None:
        """Make the chain whole again before a retry: re-publish it from the snapshot folder
        this store loaded it from, or move to the chain ``ns:current`` names now. Raises
        when neither is possible (or a retry found it lost again)."""
        where = f"Redis namespace {self.namespace!r} lost layer(s) {', '.join(lost)}"
        where += f" of version {state.version!r} (restarted without persistence or flushed?)"
        if final:
            raise E2EError(f"{where}, again right after it was published anew")
        with self._load_lock:
            if self._state is not state:  # a load() swapped meanwhile: retry on its chain
                return
            source = self._source
            if source is not None and source.layers == state.layers:
                try:
                    self._republish(source)
                except RedisUnavailableError:
                    raise
                except Exception as exc:
                    first = (str(exc).splitlines() or [type(exc).__name__])[0]
                    raise E2EError(
                        f"{where}; publishing it again from {source.folder} failed: {first}"
                    ) from None
                log.warning("%s; published it again from %s", where, source.folder)
                return
            raw = self._call(0, lambda c: c.get(self._pointer))
            new = self._parse_pointer(raw, strict=False) if raw is not None else None
            if new is None or new.layers == state.layers:
                raise E2EError(f"{where}; load() a version again")
            with self._lock:
                if self._state is state:
                    self._state = new
                    self._checked = time.monotonic()

    def _republish(self, source: _Source) -> None:
        """Write back the layers of ``source`` that Redis lacks and, where ``ns:current`` is
        gone, point it at that chain again (never over a version published since)."""
        for entry in reversed(source.entries):  # base first
            self._register(entry["name"])
            self._ensure_layer(source.folder, entry, source.width)
        raw = self._pointer_doc(list(source.layers), source.width)
        for s in reversed(range(len(self._clients))):  # shard 0 last, as load() does
            self._call(s, lambda c: c.set(self._pointer, raw, nx=True))

    @staticmethod
    def _fill(
        out: np.ndarray, idx: np.ndarray, got: list[Any], state: _State, ks: list[str]
    ) -> None:
        """Put the newest non-null value of each key (``got`` is layer-major) into ``out``."""
        k = len(ks)
        present = np.fromiter((v is not None for v in got), bool, count=len(got))
        present = present.reshape(len(state.layers), k)
        found = present.any(axis=0).nonzero()[0]
        if found.shape[0] == 0:
            return
        first = present.argmax(axis=0)[found]
        pairs = zip(first.tolist(), found.tolist(), strict=True)
        chosen = [got[layer * k + col] for layer, col in pairs]
        blob = b"".join(chosen)
        row_bytes = 4 * state.width
        if len(blob) != row_bytes * len(chosen):
            for layer, col, value in zip(first.tolist(), found.tolist(), chosen, strict=True):
                if len(value) != row_bytes:
                    raise DataError(
                        f"Redis key {state.prefixes[layer]}{ks[col]} holds {len(value)} bytes, "
                        f"not {row_bytes} (width {state.width} float32)"
                    )
        out[idx[found]] = np.frombuffer(blob, dtype="<f4").reshape(-1, state.width)

    def load(self, snapshot_folder: str | Path, version: str | None = None) -> None:
        """Write the layers of ``version`` (default: the newest) that Redis lacks, then make
        it current on every shard and in this store. A delta costs only its own rows."""
        folder = Path(snapshot_folder)
        with self._load_lock:
            manifest = read_manifest(folder)
            width = int(manifest["width"])
            chain = version_chain(manifest, version, folder)
            for entry in reversed(chain):  # base first
                self._register(entry["name"])  # before its rows: a half-written one is pruned
                self._ensure_layer(folder, entry, width)
            layers = [e["name"] for e in chain]
            raw = self._pointer_doc(layers, width)
            # shard 0 last: servers poll shard 0, and every shard's copy is set by then
            for s in reversed(range(1, len(self._clients))):
                self._call(s, lambda c: c.set(self._pointer, raw))
            old = self._call(0, lambda c: c.getset(self._pointer, raw))
            replaced = self._parse_pointer(old, strict=False) if old is not None else None
            new = self._parse_pointer(raw, strict=True)
            with self._lock:
                self._state = new
                self._source = _Source(folder, tuple(dict(e) for e in chain), width)
                self._replaced = replaced.layers if replaced else ()
                self._checked = time.monotonic()

    def _pointer_doc(self, layers: list[str], width: int) -> bytes:
        """The ``ns:current`` value naming ``layers`` (newest first)."""
        doc = {"version": layers[0], "layers": layers, "width": width, "shards": len(self._clients)}
        return json.dumps(doc).encode()

    def _register(self, name: str) -> None:
        """Record ``name`` in ``ns:layers`` (once: a layer keeps the age of its first write)."""
        if self._call(0, lambda c: c.zscore(self._registry, name)) is None:
            seq = self._call(0, lambda c: c.incr(self._seq))
            self._call(0, lambda c: c.zadd(self._registry, {name: seq}, nx=True))

    def prune(self, keep: Sequence[str] = ()) -> list[str]:
        """Drop the layers older than every chain still in use; their names, oldest first.

        Why this rule is safe with many servers sharing the namespace: a layer is dropped only
        when it was first written before the oldest layer of the chains still in use (this
        store's chain, the chain ``ns:current`` named before this store's ``load`` replaced
        it, the chain ``ns:current`` names now, and ``keep``: the chain this server served
        before the swap, for batches still running on it) and is in none of them. So a
        server that has not refreshed yet (``refresh_s``, ``serve.watch_s``) and is one
        version behind still finds its rows, a layer a concurrent load is writing (newer by
        age) is never touched, and a server dropping stale layers needs no word from the
        one that wrote them. A server more than one published version behind may find its
        layers dropped: its lookups publish them again from its folder (or fail, once the
        folder dropped them too), so follow the folder more often than versions are
        published. One snapshot folder per
        namespace (``ns:current`` is one lineage); layers written by an e2ekit that kept no
        ``ns:layers`` are not listed there and stay (``drop`` removes them).
        """
        state = self._state
        if state is None:
            return []
        in_use = {*state.layers, *self._replaced, *keep}
        ages = [self._call(0, lambda c, n=n: c.zscore(self._registry, n)) for n in in_use]
        known = [a for a in ages if a is not None]
        if not known:
            return []
        floor = min(known)
        current = self._call(0, lambda c: c.get(self._pointer))
        parsed = self._parse_pointer(current, strict=False) if current is not None else None
        in_use |= set(parsed.layers) if parsed else set()
        older = self._call(0, lambda c: c.zrangebyscore(self._registry, "-inf", f"({floor}"))
        gone = [n.decode() for n in older if n.decode() not in in_use]
        for name in gone:
            self._drop_layer(name)
        if gone:
            log.info("dropped %d old layer(s) from Redis namespace %s", len(gone), self.namespace)
        return gone

    def _layer_doc(self, entry: dict[str, Any], width: int) -> dict[str, Any]:
        return {
            "rows": entry["rows"],
            "width": width,
            "kind": entry["kind"],
            "parent": entry.get("parent"),
            "created": entry.get("created"),
            "digest": entry.get("digest"),
            "shards": len(self._clients),
        }

    def _ensure_layer(self, folder: Path, entry: dict[str, Any], width: int) -> None:
        """Write one version's rows unless every shard already holds exactly that layer."""
        name = entry["name"]
        marker = f"{self.namespace}:{name}:layer"
        want = self._layer_doc(entry, width)
        have = [self._call(s, lambda c: c.get(marker)) for s in range(len(self._clients))]
        docs = [json.loads(h) if h is not None else None for h in have]
        if all(d == want for d in docs):
            return
        for s, doc in enumerate(docs):
            if doc is not None and doc != want:
                raise E2EError(
                    f"{self.urls[s]}: namespace {self.namespace!r} already holds a different "
                    f"version {name!r} ({doc}); drop it or use another namespace"
                )
        layer = open_layer(folder / entry["dir"], width, entry["rows"], name)
        prefix = f"{self.namespace}:{name}:"
        n = len(self._clients)
        row_bytes = 4 * width
        for start in range(0, layer.keys.shape[0], self.chunk_rows):
            keys = layer.keys[start : start + self.chunk_rows]
            blob = np.ascontiguousarray(layer.values[start : start + self.chunk_rows], "<f4")
            blob = blob.tobytes()
            names = [prefix + str(k) for k in keys.tolist()]
            values = [blob[i : i + row_bytes] for i in range(0, len(blob), row_bytes)]
            shard = shard_of(keys, n) if n > 1 else None
            for s in range(n):
                if shard is None:
                    rows = list(zip(names, values, strict=True))
                else:
                    rows = [(names[i], values[i]) for i in (shard == s).nonzero()[0].tolist()]
                if rows:
                    self._call(s, lambda c, rows=rows: self._write_rows(c, rows))
        raw = json.dumps(want).encode()
        for s in range(n):
            self._call(s, lambda c: c.set(marker, raw))

    @staticmethod
    def _write_rows(client: Any, rows: list[tuple[str, bytes]], per_command: int = 1000) -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(rows), per_command):
            pipe.mset(dict(rows[i : i + per_command]))
        pipe.execute()

    def drop(self, version: str) -> int:
        """Delete one version's rows from every shard (not the current chain's); the count."""
        check_name(version)
        state = self._state
        current = self._clients[0].get(self._pointer)
        in_use = set(state.layers) if state else set()
        if current is not None:
            parsed = self._parse_pointer(current, strict=False)
            in_use |= set(parsed.layers) if parsed else set()
        if version in in_use:
            raise E2EError(
                f"version {version!r} is part of the current chain in namespace "
                f"{self.namespace!r}; load a version that does not read it first"
            )
        return self._drop_layer(version)

    def _drop_layer(self, version: str) -> int:
        """Unlink one layer's marker, then its rows (SCAN by prefix), then its registry entry."""
        deleted = 0
        for s in range(len(self._clients)):  # markers first: a half-dropped layer is absent
            deleted += self._call(s, lambda c: c.unlink(f"{self.namespace}:{version}:layer"))
        prefix = f"{self.namespace}:{version}:"
        for s in range(len(self._clients)):
            deleted += self._call(s, lambda c: self._unlink_prefix(c, prefix))
        self._call(0, lambda c: c.zrem(self._registry, version))
        return int(deleted)

    @staticmethod
    def _unlink_prefix(client: Any, prefix: str, batch: int = 1000) -> int:
        deleted = 0
        names: list[bytes] = []
        for name in client.scan_iter(match=prefix + "*", count=batch):
            names.append(name)
            if len(names) >= batch:
                deleted += client.unlink(*names)
                names = []
        if names:
            deleted += client.unlink(*names)
        return deleted

    def close(self) -> None:
        """Close the connections (this store's rows stay in Redis)."""
        for client in self._clients:
            client.close()
