"""Torch batches from any CTR reader: exact batch size, shuffle buffer, prefetch, sharding.

Parsing runs in a background thread (Arrow and numpy release the GIL, so it overlaps the
training step) behind a queue bounded in bytes; errors re-raise in the consumer unchanged,
and breaking out of the loop stops the thread. Shuffling is a seeded buffer of rows, so a
(seed, epoch) pair always yields the same order without ever holding the whole data set.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from e2ekit.core.errors import ConfigError
from e2ekit.ctr.data.criteo import ReaderStats

if TYPE_CHECKING:  # torch is imported on first use: reading data alone should not pay for it
    import torch

Chunk = dict[str, np.ndarray]
T = TypeVar("T")
_DONE = object()
_POLL_S = 0.1  # a blocked producer rechecks this often (it is also woken on every change)
_JOIN_S = 60.0  # a producer finishes at most the chunk it is parsing; never wait forever


def shard_files(files: Sequence[T], rank: int, world: int) -> list[T]:
    """Round-robin file shard ``rank`` of ``world``: every file is read by exactly one rank.

    Pass the same ordered list on every rank. File sharding splits the parsing work too, but
    it balances by file count, not size, and needs at least ``world`` files; with fewer,
    read all files on every rank and use ``BatchStream(..., shard=(rank, world))``.
    """
    _check_shard(rank, world)
    files = list(files)
    if len(files) < world:
        raise ConfigError(
            f"{len(files)} data file(s) cannot be split over {world} workers by file;"
            " use BatchStream(..., shard=(rank, world)) for row-level sharding"
        )
    return files[rank::world]


def _check_shard(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} must be within [0, world={world})")


def _take(parts: list[Chunk], n: int) -> tuple[Chunk, list[Chunk]]:
    """First ``n`` rows of a list of chunks (a view when one chunk suffices) and the rest."""
    head = parts[0]
    size = len(head["label"])
    if size >= n:
        out = {k: v[:n] for k, v in head.items()}
        rest = [{k: v[n:] for k, v in head.items()}] if size > n else []
        return out, rest + parts[1:]
    got, i = 0, 0
    while got < n:
        got += len(parts[i]["label"])
        i += 1
    merged = {k: np.concatenate([p[k] for p in parts[:i]]) for k in head}
    out = {k: v[:n] for k, v in merged.items()}
    rest = [{k: v[n:] for k, v in merged.items()}] if got > n else []
    return out, rest + parts[i:]


class BatchStream:
    """Iterable of ``{label float32 (B,), dense float32 (B,13), sparse int64 (B,26)}`` tensors.

    ``reader`` is any iterable of numpy chunks with a ``.stats`` (CriteoReader,
    CriteoCSVReader, SlotReader); its chunks are rebatched to exactly ``batch_size`` rows
    (the last one shorter unless ``drop_last``).

    ``shuffle_buffer`` > 0 shuffles through a buffer of that many rows: when it is full it
    is permuted, half is emitted as batches and the other half stays to mix with the next
    rows, so a row can travel well beyond one buffer while each row is copied about twice.
    The order depends only on ``seed``, the epoch (``set_epoch``) and the reader's chunks.

    ``shard=(rank, world)`` keeps batches ``rank, rank + world, ...``: the ranks get
    disjoint batches covering everything (ranks share the seed, so the shuffle is the same
    everywhere) even with a single file, but every rank parses all the data, and batch
    counts can differ by one between ranks (use ``drop_last`` or stop at a common step for
    collective ops). With enough files, prefer :func:`shard_files` on the reader's files.

    ``prefetch`` > 0 parses in a background thread, staying up to that many reader blocks
    (``reader.chunk_bytes`` of batches each; batches for readers without it) ahead.
    """

    def __init__(
        self,
        reader: Iterable[Chunk],
        *,
        batch_size: int,
        shuffle_buffer: int = 0,
        seed: int = 0,
        prefetch: int = 2,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if shuffle_buffer < 0 or prefetch < 0:
            raise ValueError("shuffle_buffer and prefetch must be >= 0")
        if shard is not None:
            _check_shard(*shard)
        self.reader = reader
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.shard = shard
        self.epoch = 0

    @property
    def stats(self) -> ReaderStats:
        """The reader's stats for the pass in progress or just finished."""
        return self.reader.stats  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of the next pass (same seed and epoch, same order)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.prefetch == 0:
            return self._tensors()
        return self._prefetched()

    # -- batches ----------------------------------------------------------------------------

    def _tensors(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world = self.shard or (0, 1)
        batches = self._shuffled() if self.shuffle_buffer else self._ordered()
        for i, batch in enumerate(batches):
            if i % world == rank:
                yield _to_torch(batch)

    def _ordered(self) -> Iterator[Chunk]:
        parts: list[Chunk] = []
        held = 0
        for chunk in self.reader:
            if len(chunk["label"]) == 0:
                continue
            parts.append(chunk)
            held += len(chunk["label"])
            while held >= self.batch_size:
                batch, parts = _take(parts, self.batch_size)
                held -= self.batch_size
                yield batch
        if held and not self.drop_last:
            yield _take(parts, held)[0]

    def _shuffled(self) -> Iterator[Chunk]:
        rng = np.random.default_rng([self.seed, self.epoch])
        size = max(self.shuffle_buffer, self.batch_size)
        keep = size // 2
        parts: list[Chunk] = []
        held = 0

        def mix(final: bool) -> Iterator[Chunk]:
            nonlocal parts, held
            merged, _ = _take(parts, held)
            order = rng.permutation(held)
            if final:
                emit = held
            else:  # whole batches only, leaving about ``keep`` rows behind to mix
                emit = max(held - keep, self.batch_size)
                emit -= emit % self.batch_size
            out = {k: v[order[:emit]] for k, v in merged.items()}
            parts = [{k: v[order[emit:]] for k, v in merged.items()}] if emit < held else []
            held -= emit
            for start in range(0, emit, self.batch_size):
                batch = {k: v[start : start + self.batch_size] for k, v in out.items()}
                if len(batch["label"]) == self.batch_size or not self.drop_last:
                    yield batch

        for chunk in self.reader:
            if len(chunk["label"]) == 0:
                continue
            parts.append(chunk)
            held += len(chunk["label"])
            if held >= size:
                yield from mix(final=False)
        if held:
            yield from mix(final=True)

    # -- background thread ------------------------------------------------------------------

    def _prefetched(self) -> Iterator[dict[str, torch.Tensor]]:
        # Bounded in bytes, not batches: a reader parses a whole ``chunk_bytes`` block at
        # once, then hands it out batch by batch. A queue of only ``prefetch`` batches would
        # stop the thread right after each block, and the next block would be parsed while
        # the consumer waits; a byte bound of ``prefetch`` blocks keeps one parsing ahead.
        block = int(getattr(self.reader, "chunk_bytes", 0) or 0)
        ahead = _Ahead(self.prefetch, block)

        def produce() -> None:
            source = self._tensors()
            try:
                for batch in source:
                    if not ahead.put(batch, _nbytes(batch)):
                        return
                ahead.put(_DONE, 0)
            except BaseException as exc:  # handed to the consumer, re-raised there
                ahead.put(exc, 0)
            finally:
                source.close()

        thread = threading.Thread(target=produce, name="e2ekit-batchstream", daemon=True)
        thread.start()
        try:
            while True:
                item = ahead.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            ahead.close()  # wakes a blocked producer and drops queued batches
            thread.join(timeout=_JOIN_S)


class _Ahead:
    """Producer/consumer buffer holding at most ``prefetch`` reader blocks' worth of bytes.

    The limit is ``prefetch * max(block_bytes, first batch's bytes)``, so readers without
    ``chunk_bytes`` get ``prefetch`` batches; an item is always admitted into an empty buffer.
    """

    def __init__(self, prefetch: int, block_bytes: int) -> None:
        self.prefetch = prefetch
        self.block_bytes = block_bytes
        self.limit = 0
        self.held = 0
        self.items: deque[tuple[Any, int]] = deque()
        self.closed = False
        self.cond = threading.Condition()

    def put(self, item: Any, nbytes: int) -> bool:
        """Wait for room; False once the consumer has gone (then stop producing)."""
        with self.cond:
            if not self.limit and nbytes:
                self.limit = self.prefetch * max(self.block_bytes, nbytes)
            while self.items and self.held + nbytes > self.limit and not self.closed:
                self.cond.wait(_POLL_S)
            if self.closed:
                return False
            self.items.append((item, nbytes))
            self.held += nbytes
            self.cond.notify_all()
            return True

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item, nbytes = self.items.popleft()
            self.held -= nbytes
            self.cond.notify_all()
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.items.clear()
            self.held = 0
            self.cond.notify_all()


def _nbytes(batch: dict[str, torch.Tensor]) -> int:
    return sum(t.element_size() * t.nelement() for t in batch.values())


def _to_torch(batch: Chunk) -> dict[str, torch.Tensor]:
    """Zero-copy tensors where the dtype already fits; the int8 label becomes float32."""
    import torch

    return {
        "label": torch.from_numpy(batch["label"].astype(np.float32)),
        "dense": torch.from_numpy(_writable(batch["dense"], np.float32)),
        "sparse": torch.from_numpy(_writable(batch["sparse"], np.int64)),
    }


def _writable(arr: np.ndarray, dtype: type) -> np.ndarray:
    """C-contiguous, writable ``dtype`` array (torch warns on read-only numpy memory)."""
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr if arr.flags.writeable else arr.copy()
