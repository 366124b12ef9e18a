"""ctr KV stores: snapshot base + deltas, embedded and Redis lookups, atomic version swaps."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.errors import DataError, E2EError
from e2ekit.ctr.kv import MmapStore, NotLoadedError, SnapshotWriter, layers, open_store
from e2ekit.ctr.kv.snapshots import read_manifest

W = 5
SHAPES = [(), (7,), (4, 26), (2, 3, 5), (0,), (30, 26)]  # (30, 26): the deduplicating path
Table = dict[int, np.ndarray]


def _publish(folder: Path, compact_every: int | None = 2, seed: int = 0) -> dict[str, Table]:
    """A base and four deltas (the fourth write compacted into a base); each version's
    full table as a dict, the reference every store must match."""
    rng = np.random.default_rng(seed)
    writer = SnapshotWriter(folder, compact_every=compact_every)
    keys = rng.choice(10_000, 300, replace=False)
    values = rng.standard_normal((300, W)).astype(np.float32)
    writer.write_base(keys, values, "v0", {"step": 0})
    table: Table = dict(zip(keys.tolist(), values, strict=True))
    refs = {"v0": dict(table)}
    for i in range(1, 5):
        changed = rng.choice(sorted(table), 40, replace=False)
        new = 10_000 + rng.choice(100, 5, replace=False)  # rows never seen before
        dk = rng.permutation(np.unique(np.concatenate([changed, new])))  # unsorted on purpose
        dv = (rng.standard_normal((dk.size, W)) + i).astype(np.float32)
        writer.write_delta(dk, dv, f"v{i}", {"step": i})
        table.update(zip(dk.tolist(), dv, strict=True))
        refs[f"v{i}"] = dict(table)
    return refs


def _queries(refs: dict[str, Table], seed: int = 1) -> list[np.ndarray]:
    """Key arrays of several shapes mixing held keys and keys no version holds."""
    rng = np.random.default_rng(seed)
    known = np.array(sorted(set().union(*refs.values())), np.int64)
    pool = np.concatenate([known, np.array([-5, 10_500, 2**40, 0, 9_999_999])])
    return [rng.choice(pool, size=shape) for shape in SHAPES]


def _reference(table: Table, keys: np.ndarray) -> np.ndarray:
    zero = np.zeros(W, np.float32)
    rows = [table.get(int(k), zero) for k in keys.reshape(-1)]
    return np.array(rows, np.float32).reshape((*keys.shape, W))


# -- snapshots and the embedded store --------------------------------------------------------


def test_snapshot_chain_compaction_and_mmap_lookups(tmp_path: Path) -> None:
    refs = _publish(tmp_path / "snap", compact_every=2)
    manifest = read_manifest(tmp_path / "snap")
    kinds = [(e["name"], e["kind"], e["parent"]) for e in manifest["versions"]]
    assert kinds == [
        ("v0", "base", None),
        ("v1", "delta", "v0"),
        ("v2", "delta", "v1"),
        ("v3", "base", "v2"),  # compacted: the merged table, so the chain stays short
        ("v4", "delta", "v3"),
    ]
    assert manifest["format"] == "e2ekit-ctr-snapshots" and manifest["width"] == W
    assert [p.name for p in layers(tmp_path / "snap")] == ["v-v4", "v-v3"]
    assert [p.name for p in layers(tmp_path / "snap", "v2")] == ["v-v2", "v-v1", "v-v0"]
    assert manifest["versions"][3]["rows"] == len(refs["v3"])
    for version, table in refs.items():
        store = MmapStore(tmp_path / "snap", version)
        assert store.version == version and store.width == W
        for keys in _queries(refs):
            got = store.lookup(keys)
            assert got.dtype == np.float32 and got.shape == (*keys.shape, W)
            np.testing.assert_array_equal(got, _reference(table, keys))
    newest = MmapStore(tmp_path / "snap")
    assert newest.version == "v4"
    np.testing.assert_array_equal(newest.lookup(np.array([10**12])), np.zeros((1, W)))


def test_mmap_store_matches_the_export_sparse_store(tmp_path: Path) -> None:
    from e2ekit.ctr.runner import SparseStore

    hash_size, rng = 1000, np.random.default_rng(3)
    keys = np.sort(rng.choice(26 * hash_size, 2000, replace=False)).astype(np.int64)
    values = rng.standard_normal((keys.size, W)).astype(np.float32)
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    np.save(sparse / "keys.npy", keys)
    np.save(sparse / "values.npy", values)
    manifest = {"format": "e2ekit-ctr-sparse", "format_version": 1, "hash_size": hash_size}
    manifest |= {"width": W, "keys_file": "keys.npy", "values_file": "values.npy"}
    (sparse / "manifest.json").write_text(json.dumps(manifest))
    SnapshotWriter(tmp_path / "snap").write_base(keys, values, "v0")
    ids = rng.integers(0, hash_size, (64, 26))
    np.testing.assert_array_equal(
        MmapStore(tmp_path / "snap").lookup(ids + np.arange(26) * hash_size),
        SparseStore(sparse).lookup(ids),
    )


def test_writer_refuses_bad_rows_and_names(tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path / "snap")
    with pytest.raises(E2EError, match="no base version yet"):
        writer.write_delta([1], np.ones((1, W)), "v1")
    with pytest.raises(DataError, match="key 3 appears more than once"):
        writer.write_base([3, 1, 3], np.ones((3, W)), "v0")
    with pytest.raises(DataError, match="NaN"):
        writer.write_base([1], np.full((1, W), np.nan), "v0")
    with pytest.raises(E2EError, match=r"name '\.\./x' is not allowed"):
        writer.write_base([1], np.ones((1, W)), "../x")
    assert not (tmp_path / "snap" / "manifest.json").exists()
    writer.write_base([5, 1], np.array([[5.0] * W, [1.0] * W]), "v0")  # sorted on write
    np.testing.assert_array_equal(np.load(tmp_path / "snap" / "v-v0" / "keys.npy"), [1, 5])
    with pytest.raises(DataError, match=f"width 3; the folder's width is {W}"):
        writer.write_delta([1], np.ones((1, 3)), "v1")
    with pytest.raises(E2EError, match="'v0' exists already"):
        writer.write_delta([1], np.ones((1, W)), "v0")
    assert [e["name"] for e in read_manifest(tmp_path / "snap")["versions"]] == ["v0"]
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["manifest.json", "v-v0"]


def test_empty_versions_publish_and_look_up_zeros(tmp_path: Path) -> None:
    """A base or delta of no rows (a pass that trained no row) is a valid version."""
    writer = SnapshotWriter(tmp_path / "snap")
    writer.write_base(np.zeros(0, np.int64), np.zeros((0, W), np.float32), "v0")
    writer.write_delta([], np.zeros((0, W)), "v1")
    writer.write_delta([7], np.ones((1, W)), "v2")
    digests = [e["digest"] for e in read_manifest(tmp_path / "snap")["versions"]]
    assert len(set(digests[:2])) == 1 and digests[2] != digests[0]
    store = MmapStore(tmp_path / "snap", "v1")
    np.testing.assert_array_equal(store.lookup(np.array([7, 8])), np.zeros((2, W)))
    store.load(tmp_path / "snap")
    np.testing.assert_array_equal(store.lookup(np.array([7, 8])), [[1.0] * W, [0.0] * W])


def test_prune_keeps_what_the_newest_versions_read(tmp_path: Path) -> None:
    refs = _publish(tmp_path / "snap", compact_every=2)
    store = MmapStore(tmp_path / "snap", "v2")  # maps v0..v2 before they are removed
    gone = SnapshotWriter(tmp_path / "snap").prune(keep=1)
    assert gone == ["v0", "v1", "v2"]
    assert [e["name"] for e in read_manifest(tmp_path / "snap")["versions"]] == ["v3", "v4"]
    assert not (tmp_path / "snap" / "v-v0").exists()
    keys = _queries(refs)[2]
    np.testing.assert_array_equal(store.lookup(keys), _reference(refs["v2"], keys))
    store.load(tmp_path / "snap")
    np.testing.assert_array_equal(store.lookup(keys), _reference(refs["v4"], keys))


def test_prune_of_six_versions_keeps_two_chains_and_a_kept_deltas_base(tmp_path: Path) -> None:
    """keep=2 after each of six writes: only the newest two chains stay on disk, a kept
    delta's base is never removed, and the newest version still looks up exactly."""
    snap = tmp_path / "snap"
    writer = SnapshotWriter(snap, compact_every=3)
    rng = np.random.default_rng(4)
    table: Table = {}
    for i in range(6):
        keys = rng.choice(2_000, 50, replace=False)
        values = rng.standard_normal((50, W)).astype(np.float32)
        write = writer.write_base if i == 0 else writer.write_delta
        write(keys, values, f"v{i}")
        table.update(zip(keys.tolist(), values, strict=True))
        writer.prune(keep=2)
        manifest = read_manifest(snap)
        names = [e["name"] for e in manifest["versions"]]
        chains = {p.name for v in names[-2:] for p in layers(snap, v)}
        assert sorted(p.name for p in snap.iterdir()) == sorted([*chains, "manifest.json"])
        assert names[-1] == f"v{i}" and f"v-{names[0]}" in chains
        assert manifest["versions"][0]["kind"] == "base"  # the chains' base stays
    # v0 base, v1..v3 deltas, v4 compacted base, v5 delta: v3's chain and v0 are gone
    assert names == ["v4", "v5"]
    keys = np.array([*sorted(table), 5_000], np.int64)
    np.testing.assert_array_equal(MmapStore(snap).lookup(keys), _reference(table, keys))
    writer = SnapshotWriter(tmp_path / "chain")  # no compaction: the base stays throughout
    writer.write_base([1], np.ones((1, W)), "b")
    for i in range(4):
        writer.write_delta([i + 2], np.full((1, W), i), f"d{i}")
        assert writer.prune(keep=1) == []
    assert (tmp_path / "chain" / "v-b").is_dir()


def _corrupt(snap: Path, case: str) -> tuple[str, Path]:
    """Damage one file of a published folder; the message expected and the file it names."""
    manifest = snap / "manifest.json"
    doc = json.loads(manifest.read_text())
    if case == "garbage":
        manifest.write_text('{"format": "e2ekit-ctr-snap')
        return "not a readable JSON manifest", manifest
    if case == "format":
        manifest.write_text(json.dumps(doc | {"format": "other"}))
        return "format 'other' is not e2ekit-ctr-snapshots", manifest
    if case == "newer":
        manifest.write_text(json.dumps(doc | {"format_version": 9}))
        return "format_version 9 is newer", manifest
    if case == "parent":
        doc["versions"][1]["parent"] = "nope"
        manifest.write_text(json.dumps(doc))
        return "parent 'nope' is not a version listed before it", manifest
    if case == "dir":
        doc["versions"][0]["dir"] = "../../etc"
        manifest.write_text(json.dumps(doc))
        return "is not a plain folder name", manifest
    if case == "missing":
        manifest.unlink()
        return "not found", manifest
    if case == "unsorted":
        keys = snap / "v-v1" / "keys.npy"
        np.save(keys, np.load(keys)[::-1].copy())
        return "not sorted ascending and unique", keys
    if case == "width":
        values = snap / "v-v0" / "values.npy"
        np.save(values, np.load(values)[:, :2].copy())
        return "width 2 does not match the manifest's 5", values
    if case == "truncated":
        values = snap / "v-v1" / "values.npy"
        values.write_bytes(values.read_bytes()[:100])
        return "not a readable .npy array", values
    if case == "gone":
        values = snap / "v-v1" / "values.npy"
        values.unlink()
        return "missing; the snapshot version is incomplete", values
    raise AssertionError(case)


CASES = ["garbage", "format", "newer", "parent", "dir", "missing", "unsorted", "width"]


@pytest.mark.parametrize("case", [*CASES, "truncated", "gone"])
def test_corrupt_snapshot_errors_name_the_file_and_keep_the_loaded_version(
    tmp_path: Path, case: str
) -> None:
    snap = tmp_path / "snap"
    writer = SnapshotWriter(snap)
    writer.write_base(np.arange(10), np.ones((10, W)), "v0")
    store = MmapStore(snap)
    writer.write_delta(np.arange(3), np.full((3, W), 2.0), "v1")
    message, path = _corrupt(snap, case)
    with pytest.raises(DataError) as info:
        store.load(snap)
    assert message in str(info.value) and str(path) in str(info.value)
    assert store.version == "v0"
    np.testing.assert_array_equal(store.lookup(np.array([1])), np.ones((1, W)))


def test_lookup_before_load_and_bad_keys_are_clear_errors(tmp_path: Path) -> None:
    store = MmapStore()
    with pytest.raises(NotLoadedError, match="no snapshot version loaded"):
        store.lookup(np.array([1]))
    assert store.version is None
    SnapshotWriter(tmp_path / "snap").write_base([1], np.ones((1, W)), "v0")
    store.load(tmp_path / "snap")
    with pytest.raises(DataError, match="lookup keys must be integers, got float64"):
        store.lookup(np.array([1.5]))
    with pytest.raises(E2EError, match=r"snap: no snapshot version 'v9' \(have: v0\)"):
        store.load(tmp_path / "snap", "v9")


def _hammer(store, load_versions, refs: dict[str, Table], queries: list[np.ndarray]) -> int:
    """Lookups in two threads while ``load_versions()`` swaps versions in; every answer must
    be exactly one version's rows. Returns how many answers were checked."""
    expected = [np.stack([_reference(t, q) for t in refs.values()]) for q in queries]
    for exp in expected:  # the versions differ on these keys, so a mix cannot pass
        assert len({e.tobytes() for e in exp}) == len(refs)
    problems: list[str] = []
    checked = [0, 0]
    done = threading.Event()

    def reader(slot: int) -> None:
        i = 0
        while not done.is_set() or i < 5:
            q, exp = queries[i % len(queries)], expected[i % len(queries)]
            try:
                got = store.lookup(q)
            except Exception as exc:
                problems.append(repr(exc))
                return
            matches = int(np.all(got == exp, axis=tuple(range(1, exp.ndim))).sum())
            if matches != 1:
                problems.append(f"answer matches {matches} versions")
                return
            i += 1
        checked[slot] = i

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        load_versions()
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems, problems[:3]
    return sum(checked)


def test_mmap_swap_is_atomic_under_concurrent_lookups(tmp_path: Path) -> None:
    refs = _publish(tmp_path / "snap", compact_every=2)
    store = MmapStore(tmp_path / "snap", "v0")
    queries = [np.array(sorted(set().union(*refs.values()))), _queries(refs)[5]]

    def load_versions() -> None:
        for _ in range(40):
            for version in refs:
                store.load(tmp_path / "snap", version)

    assert _hammer(store, load_versions, refs, queries) > 10


# -- open_store ------------------------------------------------------------------------------


def test_open_store_specs(tmp_path: Path) -> None:
    refs = _publish(tmp_path / "snap")
    store = open_store("embedded", snapshot_folder=tmp_path / "snap")
    assert isinstance(store, MmapStore) and store.version == "v4"
    assert isinstance(open_store("mmap"), MmapStore)
    with pytest.raises(E2EError, match=r"unknown ctr store 'embeded'.*did you mean 'embedded'"):
        open_store("embeded")
    with pytest.raises(E2EError, match="unknown ctr store 'http://x:6379'"):
        open_store("http://x:6379")
    with pytest.raises(E2EError, match="unknown ctr store"):
        open_store("redis://a:1,embedded")
    assert set(refs) == {f"v{i}" for i in range(5)}


# -- Redis -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(folder: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A redis-server without persistence on ``port`` (default: a free one)."""
    import redis

    exe = shutil.which("redis-server")
    assert exe is not None
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # another process may take the free port first
        free = port or _free_port()
        args = [exe, "--port", str(free), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(folder)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{free}/0"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                return proc, url
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        proc.kill()
        proc.wait()
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="module")
def redis_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two throwaway redis-server instances (no persistence) for this module."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    pytest.importorskip("redis")
    base = tmp_path_factory.mktemp("redis")
    started = []
    try:
        for i in range(2):
            started.append(_start_redis(base / f"r{i}"))
        yield [url for _, url in started]
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def redis_pair(redis_urls: list[str]) -> list[str]:
    """The two instances, emptied."""
    import redis

    for url in redis_urls:
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()
    return redis_urls


def _dbsize(urls: list[str]) -> int:
    import redis

    return sum(redis.Redis.from_url(u).dbsize() for u in urls)


@pytest.mark.parametrize("shards", [1, 2])
def test_redis_store_round_trip(tmp_path: Path, redis_pair: list[str], shards: int) -> None:
    import redis

    from e2ekit.ctr.kv.redis_store import RedisStore, shard_of

    refs = _publish(tmp_path / "snap", compact_every=2)
    urls = redis_pair[:shards]
    store = open_store(",".join(urls), namespace="t")
    assert isinstance(store, RedisStore) and store.version is None
    with pytest.raises(NotLoadedError, match="no version in Redis namespace 't'"):
        store.lookup(np.array([1]))
    mmap = MmapStore()
    for version, table in refs.items():
        store.load(tmp_path / "snap", version)
        mmap.load(tmp_path / "snap", version)
        assert store.version == version and store.width == W
        for keys in _queries(refs):
            got = store.lookup(keys)
            assert got.dtype == np.float32 and got.shape == (*keys.shape, W)
            np.testing.assert_array_equal(got, _reference(table, keys))
            np.testing.assert_array_equal(got, mmap.lookup(keys))
    assert store.layers == ["v4", "v3"]
    # the layout: binary float32 rows under ns:version:key, on the key's shard
    key = next(iter(refs["v0"]))
    clients = [redis.Redis.from_url(u) for u in urls]
    home = int(shard_of(np.array([key]), shards)[0])
    raw = clients[home].get(f"t:v0:{key}")
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), refs["v0"][key])
    if shards == 2:
        assert clients[1 - home].get(f"t:v0:{key}") is None
        assert all(c.dbsize() > 100 for c in clients)  # both shards hold rows
    for client in clients:
        pointer = json.loads(client.get("t:current"))
        assert pointer == {"version": "v4", "layers": ["v4", "v3"], "width": W, "shards": shards}
    store.close()


def test_redis_load_writes_only_missing_layers_and_drop(
    tmp_path: Path, redis_pair: list[str]
) -> None:
    refs = _publish(tmp_path / "snap", compact_every=None)  # v0 base, v1..v4 deltas
    rows = {e["name"]: e["rows"] for e in read_manifest(tmp_path / "snap")["versions"]}
    store = open_store(",".join(redis_pair), namespace="t")
    store.load(tmp_path / "snap", "v1")
    markers = 2 * len(redis_pair)  # one per layer per shard
    pointers = len(redis_pair) + 2  # ns:current per shard; ns:layers and ns:seq on shard 0
    assert _dbsize(redis_pair) == rows["v0"] + rows["v1"] + markers + pointers
    store.load(tmp_path / "snap", "v2")  # a delta costs only its own rows
    assert _dbsize(redis_pair) == rows["v0"] + rows["v1"] + rows["v2"] + 3 * 2 + pointers
    store.load(tmp_path / "snap", "v1")  # back to an older version: nothing written
    assert _dbsize(redis_pair) == rows["v0"] + rows["v1"] + rows["v2"] + 3 * 2 + pointers
    with pytest.raises(E2EError, match="'v0' is part of the current chain"):
        store.drop("v0")
    assert store.drop("v2") == rows["v2"] + len(redis_pair)
    assert _dbsize(redis_pair) == rows["v0"] + rows["v1"] + 2 * 2 + pointers
    keys = _queries(refs)[3]
    np.testing.assert_array_equal(store.lookup(keys), _reference(refs["v1"], keys))
    store.load(tmp_path / "snap", "v2")  # dropped, so written again
    np.testing.assert_array_equal(store.lookup(keys), _reference(refs["v2"], keys))
    store.close()


def _prefix_count(urls: list[str], prefix: str) -> int:
    import redis

    return sum(len(list(redis.Redis.from_url(u).scan_iter(match=prefix + "*"))) for u in urls)


def test_redis_prune_bounds_the_keys_across_swaps(tmp_path: Path, redis_pair: list[str]) -> None:
    """Each swap (a fresh store per version, as a server's runner does) drops the layers
    older than the previous and the new chain: the key count stays bounded, dropped layers
    leave no key, and lookups of the new and the previous version stay exact."""
    import redis

    snap = tmp_path / "snap"
    writer = SnapshotWriter(snap, compact_every=1)  # base, delta, base, delta...
    rng = np.random.default_rng(6)
    table: Table = {}
    refs: dict[str, Table] = {}
    urls = ",".join(redis_pair)
    served = open_store(urls, namespace="t", refresh_s=math.inf)
    dropped: list[str] = []
    registry = redis.Redis.from_url(redis_pair[0])
    for i in range(8):
        keys = rng.choice(3_000, 200, replace=False)
        values = rng.standard_normal((200, W)).astype(np.float32)
        (writer.write_base if i == 0 else writer.write_delta)(keys, values, f"v{i}")
        table.update(zip(keys.tolist(), values, strict=True))
        refs[f"v{i}"] = dict(table)
        if i == 0:
            served.load(snap)
            continue
        previous, old = served.layers, served
        served = open_store(urls, namespace="t", snapshot_folder=snap, refresh_s=math.inf)
        dropped += served.prune(keep=previous)
        query = np.array([*sorted(table), 9_999], np.int64)
        np.testing.assert_array_equal(served.lookup(query), _reference(refs[f"v{i}"], query))
        np.testing.assert_array_equal(old.lookup(query), _reference(refs[f"v{i - 1}"], query))
        old.close()
        held = {n.decode() for n in registry.zrange("t:layers", 0, -1)}
        assert held == {*previous, *served.layers}  # bounded: the new and the previous chain
        rows = {e["name"]: e["rows"] for e in read_manifest(snap)["versions"]}
        markers, pointers = 2 * len(held), 2 + 2  # + ns:layers and ns:seq
        assert _dbsize(redis_pair) == sum(rows[n] for n in held) + markers + pointers
    assert dropped == [f"v{i}" for i in range(6)]  # v7 (delta) and v6 (base) read no older
    for name in dropped:
        assert _prefix_count(redis_pair, f"t:{name}:") == 0
    served.close()


def test_redis_prune_keeps_the_chain_a_server_one_version_behind_reads(
    tmp_path: Path, redis_pair: list[str]
) -> None:
    """Another server swapping ahead keeps the chain ns:current named before it (servers
    that have not refreshed yet read it) and drops only what is older."""
    refs = _publish(tmp_path / "snap", compact_every=1)  # v0 b, v1 d, v2 b, v3 d, v4 b
    snap, urls = tmp_path / "snap", ",".join(redis_pair)
    keys = _queries(refs)[2]
    behind = open_store(urls, namespace="t", snapshot_folder=snap, version="v1")
    ahead = open_store(urls, namespace="t", snapshot_folder=snap, version="v2")
    assert ahead.prune() == []  # v1's chain (v1, v0) is the previous one
    np.testing.assert_array_equal(behind.lookup(keys), _reference(refs["v1"], keys))
    behind.close()
    behind = ahead
    ahead = open_store(urls, namespace="t", snapshot_folder=snap, version="v3")
    assert ahead.prune() == ["v0", "v1"]  # older than v2, which the previous chain reads
    np.testing.assert_array_equal(behind.lookup(keys), _reference(refs["v2"], keys))
    np.testing.assert_array_equal(ahead.lookup(keys), _reference(refs["v3"], keys))
    assert _prefix_count(redis_pair, "t:v0:") == _prefix_count(redis_pair, "t:v1:") == 0
    for store in (behind, ahead):
        store.close()


def test_redis_servers_follow_the_published_version(tmp_path: Path, redis_pair: list[str]) -> None:
    refs = _publish(tmp_path / "snap")
    keys = _queries(refs)[2]
    trainer = open_store(",".join(redis_pair), namespace="t")
    trainer.load(tmp_path / "snap", "v1")
    follower = open_store(",".join(redis_pair), namespace="t", refresh_s=0)
    pinned = open_store(",".join(redis_pair), namespace="t", refresh_s=3600)
    other_ns = open_store(",".join(redis_pair), namespace="u")
    assert follower.version == pinned.version == "v1" and other_ns.version is None
    trainer.load(tmp_path / "snap", "v3")
    np.testing.assert_array_equal(follower.lookup(keys), _reference(refs["v3"], keys))
    assert follower.version == "v3"
    # a store that has not re-read the pointer yet still answers the old version whole
    np.testing.assert_array_equal(pinned.lookup(keys), _reference(refs["v1"], keys))
    with pytest.raises(E2EError, match="written for 2 shard"):
        open_store(redis_pair[0], namespace="t")
    for store in (trainer, follower, pinned, other_ns):
        store.close()


def test_redis_refuses_a_different_layer_of_the_same_name(
    tmp_path: Path, redis_pair: list[str]
) -> None:
    _publish(tmp_path / "a", seed=0)
    _publish(tmp_path / "b", seed=5)
    entries = [read_manifest(tmp_path / f)["versions"][0] for f in "ab"]
    assert entries[0]["rows"] == entries[1]["rows"] and entries[0]["digest"] != entries[1]["digest"]
    store = open_store(redis_pair[0], namespace="t")
    store.load(tmp_path / "a", "v0")
    with pytest.raises(E2EError, match="already holds a different version 'v0'"):
        store.load(tmp_path / "b", "v0")
    assert store.version == "v0"
    store.close()


def test_redis_value_of_the_wrong_size_is_named(tmp_path: Path, redis_pair: list[str]) -> None:
    import redis

    refs = _publish(tmp_path / "snap")
    store = open_store(redis_pair[0], namespace="t")
    store.load(tmp_path / "snap", "v0")
    key = next(iter(refs["v0"]))
    redis.Redis.from_url(redis_pair[0]).set(f"t:v0:{key}", b"abc")
    with pytest.raises(DataError, match=f"Redis key t:v0:{key} holds 3 bytes, not 20"):
        store.lookup(np.array([key]))
    store.close()


def test_redis_unreachable_is_a_clear_error() -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with pytest.raises(E2EError, match="cannot reach Redis"):
        open_store(url, timeout_s=1)


def test_redis_swap_is_atomic_under_concurrent_lookups(
    tmp_path: Path, redis_pair: list[str]
) -> None:
    refs = _publish(tmp_path / "snap", compact_every=2)
    store = open_store(",".join(redis_pair), namespace="t")
    for version in refs:  # rows written up front: the loop below only swaps
        store.load(tmp_path / "snap", version)
    queries = [np.array(sorted(set().union(*refs.values()))), _queries(refs)[2]]

    def load_versions() -> None:
        for _ in range(8):
            for version in refs:
                store.load(tmp_path / "snap", version)

    assert _hammer(store, load_versions, refs, queries) > 5
    store.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("flush", ["all", "one shard"])
def test_redis_flush_between_lookups_publishes_the_chain_again(
    tmp_path: Path, redis_pair: list[str], flush: str
) -> None:
    """A Redis restarted empty (or FLUSHALL) under a pinned store: the next lookup answers
    the same rows, not zeros, and the layers, their markers and the pointer are back."""
    import redis

    refs = _publish(tmp_path / "snap", compact_every=None)  # v0 base, v1..v4 deltas
    store = open_store(
        ",".join(redis_pair), namespace="t", snapshot_folder=tmp_path / "snap", version="v2",
        refresh_s=math.inf,
    )  # fmt: skip
    keys = np.array(sorted(refs["v2"])[:40], np.int64).reshape(4, 10)
    first = store.lookup(keys)
    np.testing.assert_array_equal(first, _reference(refs["v2"], keys))
    before = _dbsize(redis_pair)
    clients = [redis.Redis.from_url(u) for u in redis_pair]
    for client in clients if flush == "all" else clients[1:]:
        client.flushall()
    assert _dbsize(redis_pair) < before
    np.testing.assert_array_equal(store.lookup(keys), first)
    assert _dbsize(redis_pair) == before
    for client in clients:
        assert all(client.exists(f"t:{v}:layer") for v in ("v0", "v1", "v2"))
        assert json.loads(client.get("t:current"))["version"] == "v2"
    store.close()


def test_redis_lost_chain_a_store_cannot_publish_is_an_error_not_zeros(
    tmp_path: Path, redis_pair: list[str]
) -> None:
    """A store that follows ``ns:current`` (no folder of its own) or whose folder no longer
    holds the version raises a clear error once Redis lost its layers."""
    import redis

    refs = _publish(tmp_path / "snap")
    keys = np.array(sorted(refs["v1"])[:8], np.int64)
    loader = open_store(redis_pair[0], namespace="t", snapshot_folder=tmp_path / "snap")
    follower = open_store(redis_pair[0], namespace="t", refresh_s=math.inf)
    assert follower.version == "v4"
    redis.Redis.from_url(redis_pair[0]).flushall()
    with pytest.raises(E2EError, match=r"lost layer.* of version 'v4'.*load\(\) a version"):
        follower.lookup(keys)
    shutil.rmtree(tmp_path / "snap")
    with pytest.raises(E2EError, match=r"publishing it again from .*snap failed"):
        loader.lookup(keys)
    for store in (loader, follower):
        store.close()


def test_redis_stopped_is_a_clear_error_and_a_restart_heals(tmp_path: Path) -> None:
    """Redis down: lookups raise RedisUnavailableError, never zeros; started again empty on
    the same port, the next lookup publishes the chain anew and answers as before."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    pytest.importorskip("redis")
    from e2ekit.ctr.kv.redis_store import RedisUnavailableError

    refs = _publish(tmp_path / "snap")
    proc, url = _start_redis(tmp_path / "r")
    try:
        store = open_store(
            url, namespace="t", snapshot_folder=tmp_path / "snap", refresh_s=math.inf,
            timeout_s=2,
        )  # fmt: skip
        keys = np.array(sorted(refs["v4"])[:8], np.int64)
        first = store.lookup(keys)
        np.testing.assert_array_equal(first, _reference(refs["v4"], keys))
        _stop(proc)
        with pytest.raises(RedisUnavailableError, match=f"{url}: cannot reach Redis"):
            store.lookup(keys)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proc = _start_redis(tmp_path / "r2", port=port)[0]
        np.testing.assert_array_equal(store.lookup(keys), first)
        store.close()
    finally:
        _stop(proc)
