"""ctr serving folders: training publishes versions (a base, then deltas, each with its dense
model), predict and serve read them from the embedded or the Redis store, and a server
follows new versions live without failing a request."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from e2ekit.core.config import load_config
from e2ekit.core.infer import Predictor
from e2ekit.core.kit import get_kit
from e2ekit.core.verbs import export_run_schema
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.kv import MmapStore, read_manifest

from ..conftest import ROOT

TINY = ROOT / "configs" / "ctr" / "tiny.yaml"
PARTS = ["20261101/00", "20261101/01", "20261101/02"]


def last_json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of the tiny config publishing into ``serving`` (export.snapshots)."""
    from e2ekit.core.cli import main

    out = tmp_path_factory.mktemp("ctr_serving") / "run"
    args = ["ctr", "train", "-c", str(TINY), "--out", str(out), "-o", "train.epochs=2"]
    assert main([*args, "-o", "export.snapshots=serving", "-o", "train.progress=false"]) == 0
    return out


def val_rows(n: int | None = None) -> list[str]:
    from e2ekit.ctr.data.splits import split_paths

    lines = Path(split_paths(load_config(TINY, CtrConfig, []), "val")).read_text().splitlines()
    return lines[:n] if n else lines


def final_table(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The last checkpoint's table and the rows its optimizer ever updated."""
    ckpt = torch.load(run / "last.pt", weights_only=False)
    table = ckpt["model"]["tables.embedding.weight"].numpy()
    touched = ckpt["stepper"]["row_optimizer"]["state"]["exp_avg_sq"].sum(dim=1) > 0
    return table, touched.nonzero().squeeze(1).numpy()


def with_settings(predictor: Predictor, **sections: Any) -> Predictor:
    """``predictor`` carrying ctr's running sections, as ``predict`` / ``serve`` give it."""
    predictor.settings = export_run_schema(CtrConfig).model_validate(sections)  # type: ignore[attr-defined]
    return predictor


# -- training publishes ---------------------------------------------------------------------------
def test_two_epochs_publish_a_base_and_a_delta_that_rebuild_the_table(run: Path) -> None:
    """export.snapshots: one version per pass, each with its dense model; the chain holds
    exactly the final table's trained rows."""
    serving = run / "serving"
    manifest = read_manifest(serving / "sparse")
    versions = [(e["name"], e["kind"], e["parent"]) for e in manifest["versions"]]
    assert versions == [("step-12", "base", None), ("step-24", "delta", "step-12")]
    for entry in manifest["versions"]:
        assert entry["meta"]["dense"] == f"dense/{entry['name']}.onnx"
        assert (serving / entry["meta"]["dense"]).is_file()
    deploy = yaml.safe_load((serving / "deploy.yaml").read_text())
    assert deploy["model_file"] == "dense/step-24.onnx" and deploy["model_version"] == "step-24"
    assert deploy["sparse"]["version"] == "step-24"

    table, touched = final_table(run)
    store = MmapStore(serving / "sparse")
    keys = np.arange(table.shape[0], dtype=np.int64)
    rows = store.lookup(keys)
    np.testing.assert_array_equal(rows[touched], table[touched])
    untouched = np.setdiff1d(keys, touched)
    assert not rows[untouched].any(), "rows never trained are not published"


def test_serving_folder_predicts_like_the_checkpoint(cli, run: Path, tmp_path: Path) -> None:
    """predict --model on the serving folder == the checkpoint in PyTorch (up to the rows
    never trained: zeros in the store, near-zero init in the model)."""
    from e2ekit.ctr.data.splits import split_paths

    val = split_paths(load_config(TINY, CtrConfig, []), "val")
    preds, versions = {}, {}
    for flag, value in (("--model", run / "serving"), ("--weights", run / "last.pt")):
        out = tmp_path / flag.strip("-")
        code, stdout, err = cli("ctr", "predict", flag, value, "--input", val, "--out", out)
        assert code == 0, err
        versions[flag] = last_json(stdout)["model_version"]
        lines = (out / "predictions.tsv").read_text().splitlines()[1:]
        preds[flag] = np.array([float(x.split("\t")[0]) for x in lines])
    assert versions["--model"] == "step-24"
    np.testing.assert_allclose(preds["--model"], preds["--weights"], atol=1e-3)


def test_exports_made_before_snapshots_still_serve(run: Path, tmp_path: Path) -> None:
    """An export whose sparse/ is the older e2ekit-ctr-sparse pair of files scores as the
    snapshot export it was made from."""
    from e2ekit.ctr.export import export_model
    from e2ekit.ctr.runner import CtrRunner

    new, old = tmp_path / "new", tmp_path / "old"
    model = _model(run)
    export_model(model, _cfg(run), new, version="step-24", quiet=True)
    shutil.copytree(new, old)
    for name in ("keys.npy", "values.npy"):  # the one version's files, at the top of sparse/
        shutil.move(old / "sparse" / "v-step-24" / name, old / "sparse" / name)
    shutil.rmtree(old / "sparse" / "v-step-24")
    legacy = {
        "format": "e2ekit-ctr-sparse",
        "format_version": 1,
        "model_version": "step-24",
        "hash_size": model.hash_size,
        "width": model.width,
        "keys_file": "keys.npy",
        "values_file": "values.npy",
    }
    (old / "sparse" / "manifest.json").write_text(json.dumps(legacy))
    deploy = yaml.safe_load((old / "deploy.yaml").read_text())
    deploy["sparse"] = {"dir": "sparse", "format": "e2ekit-ctr-sparse", "version": 1}
    (old / "deploy.yaml").write_text(yaml.safe_dump(deploy, sort_keys=False))
    rows = val_rows(64)
    a = CtrRunner(Predictor(new)).score_lines(rows)[0]
    b = CtrRunner(Predictor(old)).score_lines(rows)[0]
    np.testing.assert_array_equal(a, b)


def _cfg(run: Path) -> CtrConfig:
    return load_config(run / "config.yaml", CtrConfig, [])


def _model(run: Path) -> Any:
    from e2ekit.ctr.engine.stepper import build_model

    model = build_model(_cfg(run))
    model.load_state_dict(torch.load(run / "last.pt", weights_only=False)["model"])
    return model


def test_streaming_partitions_publish_versions_and_compact(tmp_path: Path) -> None:
    """One version per streaming partition (named after it); a delta holds only the rows
    the partition trained; snapshot_compact_every=1 makes the third version a merged base."""
    from e2ekit.ctr.data.synthetic import write_synthetic_criteo
    from e2ekit.ctr.engine.fit import CtrTrainer
    from e2ekit.ctr.engine.stream import fit_stream

    stream, out = tmp_path / "stream", tmp_path / "run"
    write_synthetic_criteo(stream, rows=3 * 300, seed=3, partitions=PARTS)
    overrides = [
        "export.snapshots=serving",
        "export.snapshot_compact_every=1",
        "stream.export_each=false",
        "stream.eval_before_train=false",
        "train.progress=false",
    ]
    fit_stream(CtrTrainer(load_config(TINY, CtrConfig, overrides), out), stream)
    manifest = read_manifest(out / "serving" / "sparse")
    got = [(e["name"], e["kind"]) for e in manifest["versions"]]
    steps = [e["meta"]["step"] for e in manifest["versions"]]
    tags = [p.replace("/", "-") for p in PARTS]
    assert got == [
        (f"step-{steps[0]}-{tags[0]}", "base"),
        (f"step-{steps[1]}-{tags[1]}", "delta"),
        (f"step-{steps[2]}-{tags[2]}", "base"),  # compacted after one delta
    ]
    _, delta, merged = manifest["versions"]
    assert 0 < delta["rows"] < merged["rows"], "a delta holds the partition's rows only"
    table, touched = final_table(out)
    assert merged["rows"] == touched.size
    rows = MmapStore(out / "serving" / "sparse").lookup(touched.astype(np.int64))
    np.testing.assert_array_equal(rows, table[touched])


def test_snapshot_keep_prunes_old_versions_and_their_dense_models(
    run: Path, tmp_path: Path
) -> None:
    """export.snapshot_keep=2: after six versions the folder holds exactly the files of the
    newest two chains (a kept delta's base included), and the newest still looks up exactly."""
    from e2ekit.ctr.export import Publisher
    from e2ekit.ctr.kv import layers

    overrides = ["export.snapshot_keep=2", "export.snapshot_compact_every=2"]
    cfg, model = load_config(run / "config.yaml", CtrConfig, overrides), _model(run)
    serving = tmp_path / "serving"
    publisher = Publisher(serving, cfg, model.width)
    table = model.tables.embedding.weight.detach().numpy()
    served = MmapStore()
    for i in range(6):
        rows = torch.arange(i * 10, i * 10 + 40)
        publisher.publish(model, f"v{i}", rows, None if i == 0 else rows)
        if i == 1:
            served.load(serving / "sparse")  # a server on v1: its maps outlive the prune
    manifest = read_manifest(serving / "sparse")
    names = [e["name"] for e in manifest["versions"]]
    kinds = [e["kind"] for e in manifest["versions"]]
    assert names == ["v3", "v4", "v5"] and kinds == ["base", "delta", "delta"]  # v3: v4's base
    chains = {p.name for v in names[-2:] for p in layers(serving / "sparse", v)}
    assert chains == {"v-v3", "v-v4", "v-v5"}
    assert sorted(p.name for p in (serving / "sparse").iterdir()) == [
        "manifest.json",
        *sorted(chains),
    ]
    assert sorted(p.name for p in (serving / "dense").iterdir()) == [f"{n}.onnx" for n in names]
    keys = np.arange(0, 90, dtype=np.int64)
    np.testing.assert_array_equal(MmapStore(serving / "sparse").lookup(keys), table[keys])
    np.testing.assert_array_equal(served.lookup(keys[:50]), table[:50])
    assert yaml.safe_load((serving / "deploy.yaml").read_text())["sparse"]["version"] == "v5"


# -- serving follows versions ---------------------------------------------------------------------
class Load:
    """Threads posting /predict in a loop; every response's status and model_version."""

    def __init__(self, client: Any, rows: list[str], threads: int = 3) -> None:
        self.client = client
        self.rows = rows
        self.stop = threading.Event()
        self.seen: list[tuple[int, str | None]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]

    def _loop(self, i: int) -> None:
        while not self.stop.is_set():
            rows = self.rows[i * 4 : i * 4 + 4]
            try:
                r = self.client.post("/predict", json={"rows": rows})
                got = (r.status_code, r.json().get("model_version"))
            except Exception as exc:  # a transport failure counts as a failed request
                got = (-1, repr(exc))
            with self.lock:
                self.seen.append(got)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def versions(self) -> list[str | None]:
        with self.lock:
            return [v for _, v in self.seen]

    def wait_for(self, version: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while version not in self.versions()[-3:]:
            assert time.monotonic() < deadline, f"no response from {version} in {timeout}s"
            time.sleep(0.02)


def _train_a_little(model: Any, cfg: CtrConfig, steps: int = 3) -> Any:
    """A few more training steps on ``model``; the stepper's mask of changed rows."""
    from e2ekit.ctr.data.splits import make_stream, split_paths
    from e2ekit.ctr.engine.stepper import Stepper

    stepper = Stepper(model, cfg)
    stepper.track_changes()
    for i, batch in enumerate(make_stream(cfg, split_paths(cfg, "train"), train=True)):
        if i >= steps:
            break
        stepper.step(batch)
    return stepper


def test_server_swaps_versions_under_load_without_a_failed_request(
    run: Path, tmp_path: Path
) -> None:
    """serve.watch_s: while requests flow, the trainer-side writer publishes a new version;
    no request fails, responses and /health move to it, and its answers are those of the new
    table with the new dense model."""
    from fastapi.testclient import TestClient

    from e2ekit.core.serve import ServeSettings, create_app
    from e2ekit.ctr.export import Publisher
    from e2ekit.ctr.runner import CtrRunner

    cfg, model = _cfg(run), _model(run)
    serving = tmp_path / "serving"
    publisher = Publisher(serving, cfg, model.width)
    publisher.publish(model, "v1", torch.from_numpy(final_table(run)[1]), None)

    kit = get_kit("ctr")
    predictor = with_settings(Predictor(serving), serve={"watch_s": 0.05})
    app = create_app(kit.endpoints(predictor), ServeSettings(max_wait_ms=1.0))
    rows = val_rows(12)
    with TestClient(app) as client, Load(client, rows) as load:
        load.wait_for("v1")
        stepper = _train_a_little(model, cfg)
        entry = publisher.publish(model, "v2", stepper.rows.touched_rows(), stepper.changed)
        assert entry["kind"] == "delta"
        load.wait_for("v2")
        assert client.get("/health").json()["model_version"] == "v2"
        after = client.post("/predict", json={"rows": rows}).json()
    statuses = {status for status, _ in load.seen}
    assert statuses == {200}, f"failed requests: {[s for s in load.seen if s[0] != 200][:3]}"
    versions = load.versions()
    first_new = versions.index("v2")
    assert set(versions[:first_new]) == {"v1"} and len(versions) > first_new
    fresh = CtrRunner(Predictor(serving))  # deploy.yaml now names v2 and its dense model
    assert fresh.version == "v2"
    np.testing.assert_allclose(after["probs"], fresh.score_lines(rows)[0], atol=1e-6)
    assert after["model_version"] == "v2"


def test_a_corrupt_new_version_keeps_the_current_one(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A published version whose dense model does not load: a warning, the old pair stays."""
    from e2ekit.ctr.export import Publisher
    from e2ekit.ctr.kv import SnapshotWriter
    from e2ekit.ctr.runner import CtrRunner

    cfg, model = _cfg(run), _model(run)
    serving = tmp_path / "serving"
    Publisher(serving, cfg, model.width).publish(model, "v1", torch.arange(40), None)
    runner = CtrRunner(Predictor(serving))
    rows = val_rows(8)
    before = runner.score_lines(rows)[0]
    (serving / "dense" / "v2.onnx").write_bytes(b"not an onnx model")
    writer = SnapshotWriter(serving / "sparse")
    writer.write_delta(np.arange(3), np.ones((3, model.width)), "v2", {"dense": "dense/v2.onnx"})
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        assert runner.refresh() is False
    assert "v2" not in runner.version and "not loaded" in caplog.text and "v1" in caplog.text
    np.testing.assert_array_equal(runner.score_lines(rows)[0], before)
    writer.write_delta(np.arange(3), np.ones((3, model.width)), "v3", {"dense": "../x.onnx"})
    assert runner.refresh() is False and runner.version == "v1"  # outside the folder: refused
    runner.close()


# -- Redis ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server for this module (skipped where there is none)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    pytest.importorskip("redis")
    from .test_kv import _start_redis

    proc, url = _start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_redis_store_serves_and_follows_versions(
    cli, run: Path, tmp_path: Path, redis_url: str
) -> None:
    """infer.kv=redis://...: predict publishes the layers into Redis and scores as the
    embedded store does; a server's runner follows a new version through Redis too."""
    from e2ekit.ctr.data.splits import split_paths
    from e2ekit.ctr.export import Publisher
    from e2ekit.ctr.runner import CtrRunner

    val = split_paths(load_config(TINY, CtrConfig, []), "val")
    preds = {}
    for kv in ("embedded", redis_url):
        out = tmp_path / ("redis" if kv != "embedded" else kv)
        code, stdout, err = cli(
            "ctr", "predict", "--model", run / "serving", "--input", val, "--out", out,
            "-o", f"infer.kv={kv}",
        )  # fmt: skip
        assert code == 0, err
        assert last_json(stdout)["model_version"] == "step-24"
        lines = (out / "predictions.tsv").read_text().splitlines()[1:]
        preds[kv] = np.array([float(x.split("\t")[0]) for x in lines])
    np.testing.assert_array_equal(preds[redis_url], preds["embedded"])

    cfg, model = _cfg(run), _model(run)
    serving = tmp_path / "serving"
    publisher = Publisher(serving, cfg, model.width)
    publisher.publish(model, "r1", torch.arange(model.tables.embedding.weight.shape[0]), None)
    predictor = with_settings(Predictor(serving), infer={"kv": redis_url})
    runner = CtrRunner(predictor, kv=predictor.settings.infer.kv)  # type: ignore[attr-defined]
    stepper = _train_a_little(model, cfg)
    publisher.publish(model, "r2", stepper.rows.touched_rows(), stepper.changed)
    assert runner.refresh() is True and runner.version == "r2"
    rows = val_rows(16)
    np.testing.assert_allclose(
        runner.score_lines(rows)[0], CtrRunner(Predictor(serving)).score_lines(rows)[0], atol=1e-6
    )
    publisher.writer.compact_every = 1  # r3 a merged base, r4 its delta
    for name in ("r3", "r4"):
        publisher.publish(model, name, stepper.rows.touched_rows(), stepper.changed)
        assert runner.refresh() is True and runner.version == name
    import redis

    from e2ekit.ctr.runner import redis_namespace

    ns = redis_namespace(serving / "sparse")  # the folder's own: never shared with another
    assert ns != redis_namespace(tmp_path / "another")
    client = redis.Redis.from_url(redis_url)  # r1, r2: older than the previous chain (r3)
    assert [n.decode() for n in client.zrange(f"{ns}:layers", 0, -1)][-2:] == ["r3", "r4"]
    assert not list(client.scan_iter(match=f"{ns}:r1:*"))
    assert not list(client.scan_iter(match=f"{ns}:r2:*"))
    np.testing.assert_allclose(
        runner.score_lines(rows)[0], CtrRunner(Predictor(serving)).score_lines(rows)[0], atol=1e-6
    )
    runner.close()


def test_kv_and_watch_s_are_ctr_keys_checked_up_front(cli, run: Path) -> None:
    """infer.kv takes embedded or redis:// URLs and predict reads it; serve.watch_s is
    refused for kits without it (nothing there would read it)."""
    code, _, err = cli("ctr", "serve", "--model", run / "serving", "-o", "infer.kv=memcache://h:1")
    assert code != 0 and "infer.kv" in err and "redis://" in err
    code, _, err = cli("toy", "serve", "--model", run / "serving", "-o", "serve.watch_s=1")
    assert code != 0 and "watch_s" in err
    from e2ekit.ctr.data.splits import split_paths

    val = split_paths(load_config(TINY, CtrConfig, []), "val")
    code, _, err = cli(  # read by predict: nothing listens there
        "ctr", "predict", "--model", run / "serving", "--input", val,
        "-o", "infer.kv=redis://127.0.0.1:1",
    )  # fmt: skip
    assert code != 0 and "redis://127.0.0.1:1" in err and "cannot reach Redis" in err


def test_server_on_redis_survives_a_flush_and_fails_clearly_when_it_is_down(
    run: Path, tmp_path: Path
) -> None:
    """A server pinned to a version in Redis: after FLUSHALL it answers the same
    probabilities (the chain is published again), and with Redis stopped it answers 503 with
    Retry-After (the request may succeed once Redis is back), never probabilities from zero
    rows."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
    redis = pytest.importorskip("redis")
    from fastapi.testclient import TestClient

    from e2ekit.core.serve import ServeSettings, create_app

    from .test_kv import _start_redis, _stop

    proc, url = _start_redis(tmp_path / "redis")
    try:
        predictor = with_settings(Predictor(run / "serving"), infer={"kv": url})
        app = create_app(get_kit("ctr").endpoints(predictor), ServeSettings(max_wait_ms=1.0))
        rows = val_rows(8)
        with TestClient(app) as client:
            first = client.post("/predict", json={"rows": rows})
            assert first.status_code == 200
            redis.Redis.from_url(url).flushall()
            again = client.post("/predict", json={"rows": rows})
            assert again.status_code == 200 and again.json() == first.json()
            _stop(proc)
            down = client.post("/predict", json={"rows": rows})
            assert down.status_code == 503 and down.headers["retry-after"] == "1"
            assert "cannot reach Redis" in down.json()["detail"] and "probs" not in down.json()
    finally:
        _stop(proc)
