"""``data.cache``: files parsed once into .npy columns give the batches, the weights and the
bad-row reports that training from the text gives; entries are keyed, reused and atomic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from e2ekit.core.errors import DataError
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.cache import CachedReader, _NpyColumn, cache_root, cached_entries
from e2ekit.ctr.data.splits import make_stream
from e2ekit.ctr.data.synthetic import write_synthetic_criteo

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "ctr" / "tiny.yaml")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parsed")
    one = write_synthetic_criteo(root / "one", rows=2500, seed=3).files[0]
    val = write_synthetic_criteo(root / "val", rows=600, seed=3, sample=1).files[0]
    # two files in one split: chunks and shards cross the file boundary
    write_synthetic_criteo(
        root / "two", rows=3100, seed=3, partitions=["20240101/00", "20240101/01"]
    )
    return {"one": one, "val": val, "two": root / "two"}


def make_cfg(tmp: Path, train: Path | str, **data: object) -> CtrConfig:
    return CtrConfig.model_validate(
        {
            "model": {"type": "deepfm_tiny", "hash_size": 512},
            "data": {"train": str(train), "val": None, "cache_dir": str(tmp / "cache"), **data},
            "train": {"batch_size": 256, "progress": False},
        }
    )


def batches(cfg: CtrConfig, paths: str, **kw: object) -> list[dict[str, torch.Tensor]]:
    return list(make_stream(cfg, paths, **kw))  # type: ignore[arg-type]


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def test_entry_holds_columns_and_is_reused_until_file_or_settings_change(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    src = tmp_path / "part-0.tsv"
    src.write_bytes(data["one"].read_bytes())
    cfg = make_cfg(tmp_path, src, cache=True)
    (entry,) = cached_entries(cfg, str(src))
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    assert entry.folder.parent == cache_root(cfg) == tmp_path / "cache"
    arrays = {k: np.load(entry.folder / f"{k}.npy") for k in ("label", "dense", "sparse")}
    assert arrays["label"].dtype == np.int8 and arrays["label"].shape == (2500,)
    assert arrays["dense"].dtype == np.float32 and arrays["dense"].shape == (2500, 13)
    assert arrays["sparse"].dtype == np.int32 and arrays["sparse"].shape == (2500, 26)
    meta = json.loads((entry.folder / "meta.json").read_text())
    assert meta["rows"] == 2500 and meta["bad_rows"] == 0
    assert meta["source"]["path"] == str(src.resolve())
    assert meta["source"]["size"] == src.stat().st_size
    assert meta["source"]["mtime_ns"] == src.stat().st_mtime_ns
    assert meta["settings"]["hash_size"] == 512 and meta["settings"]["format"] == "criteo"

    # the same file and settings: the same entry, not rebuilt
    stamp = (entry.folder / "meta.json").stat().st_mtime_ns
    (again,) = cached_entries(cfg, str(src))
    assert again.folder == entry.folder
    assert (again.folder / "meta.json").stat().st_mtime_ns == stamp

    # another hash size: another entry
    other = make_cfg(tmp_path, src, cache=True).model_copy(deep=True)
    other.model.hash_size = 256
    (rehashed,) = cached_entries(other, str(src))
    assert rehashed.folder != entry.folder
    assert int(np.load(rehashed.folder / "sparse.npy").max()) < 256

    # an edited file: another entry holding its rows; the old version's entries are removed
    lines = src.read_text().splitlines()[:100]
    src.write_text("\n".join(lines) + "\n")
    (edited,) = cached_entries(cfg, str(src))
    assert edited.folder not in (entry.folder, rehashed.folder) and edited.rows == 100
    assert list((tmp_path / "cache").iterdir()) == [edited.folder]


@pytest.mark.parametrize("shuffle_buffer", [0, 700])
def test_batches_equal_the_text_readers(
    tmp_path: Path, data: dict[str, Path], shuffle_buffer: int
) -> None:
    """Same batches in the same order (the cached chunks are cut as the text reader cuts
    them, so even the shuffled order is the same), over two files."""
    paths = str(data["two"])
    text = make_cfg(tmp_path, paths, shuffle_buffer=shuffle_buffer)
    cached = make_cfg(tmp_path, paths, shuffle_buffer=shuffle_buffer, cache=True)
    for epoch in (0, 1):
        want = batches(text, paths, train=True, epoch=epoch)
        got = batches(cached, paths, train=True, epoch=epoch)
        assert_same(got, want)
    assert_same(batches(cached, paths, train=False), batches(text, paths, train=False))
    assert sum(len(b["label"]) for b in want) == 3100


def test_shards_are_contiguous_row_ranges_covering_every_row(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    paths = str(data["two"])
    cfg = make_cfg(tmp_path, paths, cache=True, prefetch=0)
    entries = cached_entries(cfg, paths)
    full = list(CachedReader(entries, chunk_rows=1000))
    everything = {k: np.concatenate([c[k] for c in full]) for k in full[0]}
    assert [len(c["label"]) for c in full] == [1000, 1000, 1000, 100]
    parts = []
    for rank in range(3):
        reader = CachedReader(entries, chunk_rows=1000, shard=(rank, 3))
        chunks = list(reader)
        parts.append({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})
        assert reader.stats.rows == len(parts[-1]["label"])
    for key, col in everything.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), col)
    # through make_stream, as Hogwild workers, ps workers and DDP ranks read it
    rows = [
        sum(len(b["label"]) for b in batches(cfg, paths, train=True, shard=(r, 2)))
        for r in range(2)
    ]
    assert rows == [1550, 1550]


def test_training_from_the_cache_gives_the_same_weights(
    cli, tmp_path: Path, data: dict[str, Path]
) -> None:
    common = (
        "-c", TINY, "-o", f"data.train={data['one']}", "-o", f"data.val={data['val']}",
        "-o", "data.shuffle_buffer=600", "-o", "train.epochs=2",
    )  # fmt: skip
    code, out, err = cli("ctr", "train", *common, "--out", tmp_path / "text")
    assert code == 0, err
    assert "parse_seconds" not in last_json(out)
    cache = ("-o", "data.cache=true", "-o", f"data.cache_dir={tmp_path / 'cache'}")
    code, out, err = cli("ctr", "train", *common, *cache, "--out", tmp_path / "cached")
    assert code == 0, err
    summary = last_json(out)
    assert summary["parse_seconds"] >= 0
    metrics = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert metrics["parse_seconds"] == summary["parse_seconds"]
    log = (tmp_path / "cached" / "train.log").read_text()
    assert "parsed 2500 rows in" in log and "parsed 600 rows in" in log
    a = torch.load(tmp_path / "text" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cached" / "last.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # eval reads the run's config: the same entries, the same numbers
    code, out, err = cli("ctr", "eval", "--weights", tmp_path / "cached" / "best.pt")
    assert code == 0, err
    assert last_json(out)["auc"] == pytest.approx(metrics["auc"], abs=1e-9)
    # a second run parses nothing and says so
    code, out, err = cli("ctr", "train", *common, *cache, "--out", tmp_path / "again")
    assert code == 0, err
    log = (tmp_path / "again" / "train.log").read_text()
    assert "reusing 2500 parsed rows" in log and "parsed 2500 rows in" not in log
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_hogwild_workers_read_their_row_ranges(cli, tmp_path: Path, data: dict[str, Path]) -> None:
    run = tmp_path / "async"
    code, out, err = cli(
        "ctr", "train", "-c", TINY, "-o", f"data.train={data['one']}",
        "-o", f"data.val={data['val']}", "-o", "train.mode=async", "-o", "train.workers=2",
        "-o", "device=cpu", "-o", "data.cache=true", "-o", f"data.cache_dir={tmp_path / 'c'}",
        "--out", run,
    )  # fmt: skip
    assert code == 0, err
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["rows_seen"] == 2500  # every row once, split over the two workers
    assert "parse_seconds" in last_json(out)


def _with_bad_rows(src: Path, out: Path, at: list[int]) -> Path:
    rows = src.read_text().splitlines()[:400]
    for i in at:
        rows[i] = "2\t" + rows[i].split("\t", 1)[1]
    out.write_text("\n".join(rows) + "\n")
    return out


def _error(cfg: CtrConfig, paths: str) -> str:
    with pytest.raises(DataError) as info:
        batches(cfg, paths, train=False)
    return str(info.value)


def test_bad_rows_keep_the_text_readers_policy_and_messages(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    _with_bad_rows(data["one"], folder / "part-0.tsv", [10, 30])
    _with_bad_rows(data["one"], folder / "part-1.tsv", [5])
    paths = str(folder)
    # no limit: skipped and reported as from the text
    text, cached = make_cfg(tmp_path, paths), make_cfg(tmp_path, paths, cache=True)
    want, got = make_stream(text, paths, train=False), make_stream(cached, paths, train=False)
    assert_same(list(got), list(want))
    assert got.stats.summary() == want.stats.summary()
    assert "797 rows from 2 file(s), 3 malformed" in got.stats.summary()
    # a limit over the split: the same error whether the entries exist already or not
    for limit in (0, 2):
        strict_text = make_cfg(tmp_path, paths, max_bad_rows=limit)
        message = _error(strict_text, paths)
        for cache_dir in (tmp_path / "cache", tmp_path / f"fresh{limit}"):
            strict = make_cfg(tmp_path, paths, max_bad_rows=limit, cache=True)
            strict.data.cache_dir = str(cache_dir)
            assert _error(strict, paths) == message
    assert not (tmp_path / "fresh0").exists() or not [
        p for p in (tmp_path / "fresh0").iterdir() if p.name.startswith(".")
    ]


def test_a_failed_build_leaves_no_entry(tmp_path: Path, data: dict[str, Path]) -> None:
    bad = _with_bad_rows(data["one"], tmp_path / "bad.tsv", [3, 4])
    cfg = make_cfg(tmp_path, bad, cache=True, max_bad_rows=1)
    with pytest.raises(DataError, match="max_bad_rows=1"):
        cached_entries(cfg, str(bad))
    assert list((tmp_path / "cache").iterdir()) == []


def test_int64_columns_are_stored_int32_until_a_value_does_not_fit(tmp_path: Path) -> None:
    small = np.arange(12, dtype=np.int64).reshape(4, 3)
    col = _NpyColumn(tmp_path / "a.npy", small)
    col.append(small)
    col.append(small + 5)
    col.finish()
    got = np.load(tmp_path / "a.npy")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.concatenate([small, small + 5]))
    big = small + 2**40
    col = _NpyColumn(tmp_path / "b.npy", small)
    col.append(small)
    col.append(big)
    col.finish()
    got = np.load(tmp_path / "b.npy", mmap_mode="r")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.concatenate([small, big]))


def test_streaming_refuses_the_cache(cli, tmp_path: Path) -> None:
    write_synthetic_criteo(tmp_path / "stream", rows=300, partitions=["20240101/00"])
    code, _, err = cli(
        "ctr", "train", "-c", TINY, "--stream", tmp_path / "stream", "-o", "data.cache=true",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert code != 0 and "data.cache" in err and "--stream" in err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed",
)
def test_ddp_ranks_read_the_entries_rank_0_parsed(tmp_path: Path, data: dict[str, Path]) -> None:
    run, cache = tmp_path / "ddp", tmp_path / "cache"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
            "2", "-m", "e2ekit", "ctr", "train", "-c", TINY, "-o", "train.mode=ddp",
            "-o", "train.threads=1", "-o", f"data.train={data['one']}",
            "-o", f"data.val={data['val']}", "-o", "data.cache=true",
            "-o", f"data.cache_dir={cache}", "--out", str(run),
        ],
        cwd=ROOT, env={**os.environ, "E2EKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=False)
    # each rank reads its 1250 rows: 4 full batches of 256, the short one dropped
    assert ckpt["step"] == 4 and ckpt["rows_seen"] == 4 * 512
    assert len(list(cache.iterdir())) == 2  # train and val, each parsed once
    assert (run / "train.log").read_text().count("parsed 2500 rows in") == 1


def test_ps_workers_read_row_ranges_of_their_units(
    cli, tmp_path: Path, data: dict[str, Path]
) -> None:
    pytest.importorskip("ray")
    import ray

    from e2ekit.ctr.ps.pool import connect

    started = connect(None, 2)
    try:
        run = tmp_path / "ps"
        code, out, err = cli(
            "ctr", "train", "-c", TINY, "-o", f"data.train={data['one']}",
            "-o", f"data.val={data['val']}", "-o", "train.mode=ps", "-o", "ps.servers=1",
            "-o", "ps.workers=2", "-o", "train.threads=1", "-o", "ps.unit_mb=0.1",
            "-o", "data.cache=true", "-o", f"data.cache_dir={tmp_path / 'cache'}",
            "--out", run,
        )  # fmt: skip
    finally:
        if started:
            ray.shutdown()
    assert code == 0, err
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["rows_seen"] == 2500  # the units' row ranges cover every row once
    assert "parse_seconds" in last_json(out)
