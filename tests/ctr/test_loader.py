"""BatchStream: exact batches, every row once, seeded shuffle, prefetch thread, sharding."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.ctr.data import BatchStream, CriteoReader, shard_files, write_synthetic_criteo
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE, ReaderStats
from tests.conftest import ROOT

ROWS = 2500
THREAD = "e2ekit-batchstream"


@pytest.fixture(scope="module")
def tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loader")
    return write_synthetic_criteo(out, rows=ROWS, seed=11).files[0]


def _reader(tsv: Path) -> CriteoReader:
    return CriteoReader(tsv, batch_size=300, hash_size=1 << 16, chunk_bytes=64 << 10)


def _rows(batches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Rows as label + sparse ids, one row per line, in stream order."""
    return np.concatenate(
        [np.column_stack([b["label"].numpy(), b["sparse"].numpy()]) for b in batches]
    )


def _sorted(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def _threads_gone(timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while any(t.name == THREAD for t in threading.enumerate()):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


class Endless:
    """A reader that never ends (or fails after ``fail_after`` chunks); records being closed."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.stats = ReaderStats()
        self.fail_after = fail_after
        self.closed = False
        self.pulled = 0
        self.chunk_bytes = 0  # BatchStream sizes its prefetch buffer from this

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        try:
            i = 0
            while True:
                if self.fail_after is not None and i == self.fail_after:
                    raise LookupError("boom at chunk 3")
                yield {
                    "label": np.zeros(7, np.int8),
                    "dense": np.zeros((7, N_DENSE), np.float32),
                    "sparse": np.full((7, N_SPARSE), i, np.int64),
                }
                i += 1
                self.pulled = i
        finally:
            self.closed = True


@pytest.mark.parametrize("prefetch", [0, 2])
def test_exact_batch_sizes_and_types(tsv: Path, prefetch: int) -> None:
    stream = BatchStream(_reader(tsv), batch_size=256, prefetch=prefetch)
    batches = list(stream)
    sizes = [len(b["label"]) for b in batches]
    assert sizes == [256] * (ROWS // 256) + [ROWS % 256]
    first = batches[0]
    assert first["label"].dtype == torch.float32 and first["label"].shape == (256,)
    assert first["dense"].dtype == torch.float32 and first["dense"].shape == (256, N_DENSE)
    assert first["sparse"].dtype == torch.int64 and first["sparse"].shape == (256, N_SPARSE)
    assert stream.stats.rows == ROWS
    dropped = list(BatchStream(_reader(tsv), batch_size=256, prefetch=prefetch, drop_last=True))
    assert [len(b["label"]) for b in dropped] == [256] * (ROWS // 256)


def test_every_row_once_with_and_without_shuffle(tsv: Path) -> None:
    ref = list(_reader(tsv))
    expect = np.concatenate(
        [np.column_stack([b["label"].astype(np.float32), b["sparse"]]) for b in ref]
    )
    plain = _rows(list(BatchStream(_reader(tsv), batch_size=200, prefetch=0)))
    np.testing.assert_array_equal(plain, expect)  # unshuffled keeps file order
    for buffer in (100, 1000, 10_000):
        mixed = _rows(list(BatchStream(_reader(tsv), batch_size=200, shuffle_buffer=buffer)))
        assert not np.array_equal(mixed, expect)
        np.testing.assert_array_equal(_sorted(mixed), _sorted(expect))


def test_shuffle_is_seeded_per_epoch(tsv: Path) -> None:
    def order(seed: int, epoch: int) -> np.ndarray:
        stream = BatchStream(_reader(tsv), batch_size=128, shuffle_buffer=1000, seed=seed)
        stream.set_epoch(epoch)
        return _rows(list(stream))

    base = order(0, 0)
    np.testing.assert_array_equal(order(0, 0), base)
    assert not np.array_equal(order(0, 1), base)
    assert not np.array_equal(order(1, 0), base)
    stream = BatchStream(_reader(tsv), batch_size=128, shuffle_buffer=1000, prefetch=0)
    stream.set_epoch(1)
    np.testing.assert_array_equal(_rows(list(stream)), order(0, 1))


def test_prefetch_reraises_reader_errors(tsv: Path, tmp_path: Path) -> None:
    stream = BatchStream(Endless(fail_after=3), batch_size=5, prefetch=2)
    with pytest.raises(LookupError, match="boom at chunk 3"):
        list(stream)
    lines = tsv.read_text().splitlines()
    lines[1000] = "not\ta\trow"
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    stream = BatchStream(CriteoReader(bad, max_bad_rows=0), batch_size=64, prefetch=2)
    with pytest.raises(DataError, match=r"bad\.tsv:1001: expected 40"):
        list(stream)
    assert _threads_gone()


def test_early_break_stops_the_thread() -> None:
    reader = Endless()
    stream = BatchStream(reader, batch_size=10, prefetch=1, shuffle_buffer=50)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert _threads_gone()
    assert reader.closed


def test_prefetch_bound_is_reader_blocks() -> None:
    """With ``chunk_bytes`` the thread may run a whole block ahead; without, ``prefetch``."""

    def ahead(reader: Endless) -> int:
        it = iter(BatchStream(reader, batch_size=7, prefetch=1))
        next(it)
        time.sleep(0.5)
        pulled = reader.pulled
        it.close()
        return pulled

    assert ahead(Endless()) <= 4
    blocky = Endless()
    blocky.chunk_bytes = 20 * 7 * (4 + 4 * N_DENSE + 8 * N_SPARSE)  # 20 batches
    assert 15 <= ahead(blocky) <= 24
    assert _threads_gone()


def test_abandoned_iterator_does_not_hang_exit() -> None:
    code = (
        "import numpy as np\n"
        "from e2ekit.ctr.data import BatchStream\n"
        "from tests.ctr.test_loader import Endless\n"
        "it = iter(BatchStream(Endless(), batch_size=4, prefetch=2))\n"
        "next(it)\n"
        "print('left')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left"


@pytest.mark.parametrize("shuffle_buffer", [0, 700])
def test_row_shards_are_disjoint_and_complete(tsv: Path, shuffle_buffer: int) -> None:
    def run(shard: tuple[int, int] | None) -> list[dict[str, torch.Tensor]]:
        kw = {"batch_size": 100, "shuffle_buffer": shuffle_buffer, "seed": 3}
        return list(BatchStream(_reader(tsv), shard=shard, **kw))

    full = run(None)
    shards = [run((rank, 3)) for rank in range(3)]
    for rank, got in enumerate(shards):
        np.testing.assert_array_equal(_rows(got), _rows(full[rank::3]))
    everything = np.concatenate([_rows(s) for s in shards])
    np.testing.assert_array_equal(_sorted(everything), _sorted(_rows(full)))
    with pytest.raises(ValueError):
        BatchStream(_reader(tsv), batch_size=8, shard=(3, 3))


def test_shard_files_round_robin() -> None:
    files = [f"part-{i}" for i in range(7)]
    parts = [shard_files(files, rank, 3) for rank in range(3)]
    assert parts == [files[0::3], files[1::3], files[2::3]]
    assert sorted(f for p in parts for f in p) == files
    with pytest.raises(ConfigError, match="shard=\\(rank, world\\)"):
        shard_files(files[:2], 0, 3)
    with pytest.raises(ValueError):
        shard_files(files, 3, 3)
