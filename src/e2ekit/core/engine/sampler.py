"""Deterministic, resumable, rank-sharded batch order.

The order of epoch ``e`` depends only on (seed, e), so a resumed run skips the
batches it already trained on and sees exactly what an uninterrupted run would.
Each global batch of ``batch_size * world`` samples is split across ranks, so N
ranks at batch B train on the same samples per step as one process at batch N*B.
Indices are yielded as ``(epoch, index)`` keys so ``SeededDataset`` can give every
sample its own random stream, independent of workers and restarts.

With ``lengths`` (text), the shuffled order is cut into windows of ``bucket`` global
batches, each window is sorted by length and the batches are shuffled again: batches
hold similar lengths (little padding) while the epoch stays random and resumable.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        lengths: Sequence[int] | None = None,
        bucket: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        self.n = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.skip = 0
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
        self.lengths = torch.as_tensor(list(lengths)) if lengths is not None and bucket else None
        self.bucket = bucket

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self.n // self.global_batch) if self.n >= self.global_batch else 1
        return -(-self.n // self.global_batch)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip_batches

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def _bucketed(self, order: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_777)
        window = self.bucket * self.global_batch
        parts = []
        for chunk in order.split(window):
            keys = self.lengths[chunk]  # type: ignore[index]
            parts.append(chunk[torch.sort(keys, stable=True).indices])
        batches = torch.cat(parts).view(-1, self.global_batch)
        return batches[torch.randperm(len(batches), generator=g)].reshape(-1)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self._order()
        need = len(self) * self.global_batch
        if need > order.numel():  # pad by wrapping so every rank gets full batches
            reps = -(-need // order.numel())
            order = order.repeat(reps)
        order = order[:need]
        if self.lengths is not None and self.shuffle:
            order = self._bucketed(order)
        order = order.view(len(self), self.world, self.batch_size)
        for b in range(self.skip, len(self)):
            yield [(self.epoch, int(i)) for i in order[b, self.rank]]
        self.skip = 0


def sample_seed(base: int, epoch: int, index: int) -> int:
    return (base * 1_000_003 + epoch * 7_919 + index * 104_729 + 17) % (2**31 - 1)


class SeededDataset(Dataset):
    """Wraps a dataset so sample ``(epoch, i)`` always sees the same random numbers.

    In the main process torch's RNG state is restored afterwards, so data
    augmentation never perturbs the model's random stream (dropout, init), and
    the sample is built with one intra-op thread, as DataLoader workers do: small
    per-sample tensor ops are slower with a thread pool than without, by orders of
    magnitude when the cores are busy.
    """

    def __init__(self, inner: Dataset, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int] | int]) -> list[Any]:
        """A whole batch at once (the DataLoader's batched fetch): the thread switch and the
        RNG save/restore happen once per batch, the seeding once per sample."""
        pairs = [k if isinstance(k, tuple) else (0, k) for k in keys]
        if get_worker_info() is not None:
            return [self._seeded(epoch, index, torch.manual_seed) for epoch, index in pairs]
        # Only torch's CPU generator is saved and restored (about 1 us; the model's dropout
        # and init draw from it). Python's and numpy's global generators are used by data code
        # alone, which re-seeds them for every sample, so restoring them (60 us a sample,
        # the whole step budget of a fast GPU model at batch 32) buys nothing.
        # ``torch.default_generator.manual_seed`` leaves the CUDA generators alone (the
        # global ``torch.manual_seed`` reseeds every device: 70 us).
        gen = torch.default_generator
        state = gen.get_state()
        threads = torch.get_num_threads()
        try:
            if threads != 1:
                torch.set_num_threads(1)
            return [self._seeded(epoch, index, gen.manual_seed) for epoch, index in pairs]
        finally:
            if threads != 1:
                torch.set_num_threads(threads)
            gen.set_state(state)

    def _seeded(self, epoch: int, index: int, seed_torch: Any) -> Any:
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s)
        seed_torch(s)
        return self.inner[index]
