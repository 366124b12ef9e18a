"""``train.mode: ps``: row shards and a dense server as Ray actors, elastic worker actors.

Ray starts once for the module (a local instance on the test machine's cores)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from e2ekit.core.config import load_config
from e2ekit.core.engine.run import RunOptions
from e2ekit.core.errors import ConfigError, E2EError
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.ps.config import ps_problems
from e2ekit.ctr.ps.pool import make_units
from e2ekit.ctr.ps.servers import RowShard

from ..conftest import ROOT

ray = pytest.importorskip("ray")

TINY = ROOT / "configs" / "ctr" / "tiny.yaml"
SMALL_UNITS = "ps.unit_mb=0.1"  # the tiny train file (~0.4 MB) in a few units
PS = ("train.mode=ps", "ps.servers=2", "ps.workers=2", "train.threads=1", SMALL_UNITS)
SPARSE = {"type": "adam", "lr": 0.1}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from e2ekit.ctr.ps.pool import connect

    started = connect(None, 2)
    yield
    if started:
        ray.shutdown()


def config(*overrides: str) -> CtrConfig:
    return load_config(TINY, CtrConfig, list(overrides))


def trainer_for(tmp_path: Path, *overrides: str, resume: bool = False):
    from e2ekit.ctr.engine.fit import CtrTrainer

    return CtrTrainer(config(*PS, *overrides), tmp_path, RunOptions(resume=resume))


def trainer_paths(cfg: CtrConfig) -> str:
    from e2ekit.ctr.data.splits import split_paths

    return str(split_paths(cfg, "train"))


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def distinct_keys(cfg: CtrConfig, paths: str) -> int:
    from e2ekit.ctr.data.splits import make_stream
    from e2ekit.ctr.engine.stepper import build_model

    model = build_model(cfg)
    keys = [model.rows(b["sparse"]).reshape(-1) for b in make_stream(cfg, paths, train=False)]
    return int(torch.unique(torch.cat(keys)).numel())


# -- the servers, in-process ------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_shard_creates_rows_on_first_use_and_steps_them() -> None:
    shard = RowShard(1, 2, 100, 3, SPARSE)
    keys = np.array([1, 7, 51])
    rows = shard.pull(keys)
    assert shard.held() == 3 and 0 < np.abs(rows).max() < 1e-3  # normal, std 1e-4
    shard.push(keys, np.ones((3, 3), np.float32))
    after = shard.pull(keys)
    np.testing.assert_allclose(after, rows - 0.1, atol=1e-6)  # one Adam step of lr 0.1
    assert shard.held() == 3  # pulled again: no new rows


def test_admission_reads_zeros_and_drops_gradients_until_seen_enough() -> None:
    shard = RowShard(0, 1, 10, 2, SPARSE, admit_after=3)
    key = np.array([4])
    assert not shard.pull(key, np.array([1])).any()
    shard.push(key, np.ones((1, 2), np.float32))  # dropped: no row yet
    assert shard.held() == 0 and not shard.pull(key, np.array([1])).any()
    assert shard.pull(key, np.array([1])).any()  # third sight: a trainable row
    assert shard.held() == 1
    assert shard.export()["pending"]["keys"].numel() == 0


def test_eviction_drops_untouched_rows_and_they_start_over() -> None:
    clock = Clock()
    shard = RowShard(0, 1, 10, 2, SPARSE, admit_after=2, evict_after_s=5.0, clock=clock)
    shard.pull(np.array([1, 2]), np.array([2, 2]))
    clock.now = 4.0
    shard.pull(np.array([2]), np.array([1]))
    clock.now = 7.0
    assert shard.evict() == 1  # key 1 untouched for 7 s, key 2 for 3 s
    assert shard.export()["keys"].tolist() == [2]
    assert not shard.pull(np.array([1]), np.array([1])).any()  # must be admitted again
    slots = shard.used
    shard.pull(np.array([1]), np.array([1]))
    assert shard.held() == 2 and shard.used == slots  # the freed slot is reused


def test_ps_settings_it_cannot_honour_are_refused() -> None:
    assert ps_problems(config("train.mode=ps")) == []
    with pytest.raises(ConfigError, match=r"train\.eval_interval: a ps pass evaluates"):
        config("train.mode=ps", "train.eval_interval=5")
    with pytest.raises(ConfigError, match=r"ps\.evict_after_s"):
        config("train.mode=ps", "stream.evict_after=2")


def test_units_are_byte_ranges_of_unit_mb(tmp_path: Path) -> None:
    data = tmp_path / "a.tsv"
    data.write_bytes(b"0\t1\n" * 100_000)  # 400 kB
    assert make_units(str(data), 16) == [(str(data), 0, 1)]
    assert len(make_units(str(data), 0.1)) == 4
    (tmp_path / "b.tsv.gz").write_bytes(b"")
    assert len(make_units(str(tmp_path), 0.1)) == 5  # a compressed file goes whole


# -- workers against server actors ---------------------------------------------------------------
def test_worker_bounds_in_flight_pushes_and_pulls_dense_every_n_steps() -> None:
    from e2ekit.ctr.data.splits import split_paths
    from e2ekit.ctr.ps.servers import DenseServer
    from e2ekit.ctr.ps.worker import PsWorker

    threads = torch.get_num_threads()
    cfg = config(*PS, "ps.max_staleness=0", "ps.dense_pull_every=3")
    width = 5  # deepfm_tiny: 4 + the first-order column
    shard = ray.remote(RowShard).remote(0, 1, 26 * 512, width, SPARSE)
    dense = ray.remote(DenseServer).remote(cfg.model_dump(mode="json"))
    path = split_paths(cfg, "train")
    try:
        first = PsWorker("a", cfg.model_dump(mode="json"), [shard], dense, 1, 0)
        got = first.train_unit(path, 0, 1, 0)
        assert got["steps"] == 12 and got["dense_pulls"] == math.ceil(12 / 3)
        assert got["max_in_flight"] == 0  # every step waited for its push
        assert ray.get(dense.counters.remote())["version"] == 12
        loose = config(*PS, "ps.max_staleness=3")
        second = PsWorker("b", loose.model_dump(mode="json"), [shard], dense, 1, 1)
        got = second.train_unit(path, 0, 1, 0)
        assert got["dense_pulls"] == 12 and got["max_in_flight"] <= 3
        assert ray.get(dense.counters.remote())["version"] == 24  # all applied by the end
    finally:
        torch.set_num_threads(threads)
        ray.kill(shard)
        ray.kill(dense)


# -- whole runs ---------------------------------------------------------------------------------
def test_ps_run_reaches_the_sync_auc(cli, tmp_path: Path) -> None:
    """Two shards and two workers: close to the sync run on the same data (tiny data, so a
    loose bound; bench_ps measures the gap on a bigger run)."""
    runs = {}
    for mode, extra in (("sync", ()), ("ps", PS)):
        out_dir = tmp_path / mode
        args = ["ctr", "train", "-c", TINY, "-o", "train.epochs=2", "--out", out_dir]
        args += ["-o", "data.builtin.train_rows=12000"]
        for o in extra:
            args += ["-o", o]
        code, out, err = cli(*args)
        assert code == 0, err
        runs[mode] = last_json(out)
    assert runs["ps"]["auc"] > 0.55
    # async pushes land in a different order each run: seen within 0.015 on these 12k rows
    assert abs(runs["ps"]["auc"] - runs["sync"]["auc"]) < 0.04
    ckpt = torch.load(tmp_path / "ps" / "last.pt", weights_only=False)
    assert ckpt["rows_seen"] == 2 * 12000
    cfg = config(*PS, "data.builtin.train_rows=12000")
    from e2ekit.ctr.data.splits import split_paths

    # no admission, no eviction: a row for every key the data holds, all trained
    held = ckpt["ps"]["held"]
    assert held.numel() == distinct_keys(cfg, split_paths(cfg, "train"))
    table = ckpt["model"]["tables.embedding.weight"]
    assert table[held].abs().sum(dim=1).gt(0).all()
    assert ckpt["ps"]["version"] == ckpt["step"]


def test_killed_worker_is_replaced_and_every_unit_runs_once(tmp_path: Path) -> None:
    from e2ekit.ctr.ps.pool import PsPool

    trainer = trainer_for(
        tmp_path, "ps.max_worker_restarts=1", "ps.servers=1", "ps.workers=2", "ps.unit_mb=0.1"
    )
    pool = PsPool(trainer)
    try:
        units = make_units(trainer.train_paths, 0.1)
        assert len(units) >= 4
        assert len(pool.workers) == 2
        pool.kill_worker_after(1)
        stats = pool.train(trainer.train_paths, epoch=0)
        assert stats["restarts"] == 1 and stats["units"] == len(units)
        assert len(stats["ledger"]) == len(units)  # each unit completed exactly once
        assert set(stats["ledger"].values()) == {"worker-0", "worker-1", "worker-2"}
        assert stats["rows"] == 3000
        pool.kill_worker_after(0)  # a second death: ps.max_worker_restarts=1 is used up
        with pytest.raises(E2EError, match="max_worker_restarts"):
            pool.train(trainer.train_paths, epoch=1)
    finally:
        pool.close()
        trainer.run.close()


def test_a_worker_joins_when_the_cluster_has_a_free_cpu(tmp_path: Path) -> None:
    """ps.max_workers: the local Ray has a spare core, as when an autoscaled node joins; a
    second worker starts during the pass and takes units from the same queue."""
    import ray

    from e2ekit.ctr.ps.pool import PsPool

    trainer = trainer_for(
        tmp_path, "ps.servers=1", "ps.workers=1", "ps.max_workers=2", "ps.unit_mb=0.1"
    )
    pool = PsPool(trainer)
    try:
        assert len(pool.workers) == 1
        assert ray.available_resources().get("CPU", 0) >= 1
        stats = pool.train(trainer.train_paths, epoch=0)
        assert stats["joined"] == 1 and stats["workers"] == 2
        units = make_units(trainer.train_paths, 0.1)
        assert len(stats["ledger"]) == len(units) and stats["rows"] == 3000
        assert set(stats["ledger"].values()) == {"worker-0", "worker-1"}
    finally:
        pool.close()
        trainer.run.close()


def test_checkpoint_resume_puts_the_shards_back(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["ctr", "train", "-c", TINY, "--out", run]
    for o in (*PS, "ps.admit_after=2", "ps.workers=1", "ps.servers=2"):
        args += ["-o", o]
    code, _, err = cli(*args)
    assert code == 0, err
    first = torch.load(run / "last.pt", weights_only=False)
    # admission: keys seen once are counted but hold no row
    assert first["ps"]["pending"]["keys"].numel() > 0
    cfg = config(*PS)
    held = first["ps"]["held"].numel()
    assert (
        0
        < held
        == distinct_keys(cfg, str(trainer_paths(cfg))) - first["ps"]["pending"]["keys"].numel()
    )

    # resume for a second epoch: the servers are loaded from the checkpoint
    trainer = trainer_for(run, "ps.admit_after=2", "ps.workers=1", "train.epochs=2", resume=True)
    try:
        trainer.start_pool()
        trainer.model.tables.embedding.weight.data.fill_(7.0)  # forget: the shards must hold it
        trainer.pool.sync_to_trainer()  # no step: what was pushed back comes back unchanged
        state = trainer.state_dict()
        for key, value in first["model"].items():
            torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)
        rows = state["stepper"]["row_optimizer"]["state"]
        for name, value in first["stepper"]["row_optimizer"]["state"].items():
            torch.testing.assert_close(rows[name], value, rtol=0, atol=0)
        dense = state["stepper"]["dense_optimizer"]["state"]
        for i, value in first["stepper"]["dense_optimizer"]["state"].items():
            torch.testing.assert_close(dense[i]["exp_avg"], value["exp_avg"], rtol=0, atol=0)
        assert torch.equal(state["ps"]["pending"]["keys"], first["ps"]["pending"]["keys"])
        parts = ray.get([s.export.remote() for s in trainer.pool.shards])
        assert len(parts) == 2 and all(p["keys"].numel() for p in parts)  # ps.servers=2
        trainer.fit()  # the same pool trains on
    finally:
        trainer.close()
    second = torch.load(run / "last.pt", weights_only=False)
    assert second["epoch"] == 2 and second["rows_seen"] == 2 * 3000
    assert second["step"] == second["ps"]["version"] > first["step"]
    assert second["ps"]["held"].numel() > held  # keys seen once per epoch are now admitted


def test_eviction_changes_what_the_shards_hold(tmp_path: Path) -> None:
    from e2ekit.ctr.ps.pool import PsPool

    trainer = trainer_for(tmp_path, "ps.evict_after_s=0.001", "ps.servers=1", "ps.workers=1")
    pool = PsPool(trainer)
    try:
        stats = pool.train(trainer.train_paths, epoch=0)
        assert stats["evicted_rows"] > 0  # rows a millisecond idle are dropped as pushes come
        assert stats["held_rows"] < distinct_keys(trainer.cfg, trainer.train_paths)
        table = trainer.model.tables.embedding.weight
        assert int(table.abs().sum(dim=1).gt(0).sum()) == stats["held_rows"]  # evicted: zeros
    finally:
        pool.close()
        trainer.run.close()


def test_address_joins_that_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2ekit.ctr.ps import pool

    calls: list[dict] = []
    monkeypatch.setattr(pool.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(pool.ray, "init", lambda **kw: calls.append(kw))
    cfg = config(*PS, "ps.address=ray://head:10001")
    assert pool.connect(cfg.ps.address, cfg.ps.workers) is True
    assert calls == [{"address": "ray://head:10001", "log_to_driver": False}]


def test_ps_on_cuda_is_refused(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from e2ekit.ctr.engine.fit import CtrTrainer

    with pytest.raises(ConfigError, match=r"train\.mode=ps"):
        CtrTrainer(config(*PS, "device=cuda"), tmp_path)
