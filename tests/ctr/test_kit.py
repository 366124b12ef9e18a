"""The ctr kit end to end: train, resume, eval, export (dense ONNX + sparse store), predict,
serve; Hogwild async and DDP training; malformed rows counted."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ..conftest import ROOT, SHARED_DATA

TINY = str(ROOT / "configs" / "ctr" / "tiny.yaml")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("ctr") / "run"
    assert main(["ctr", "train", "-c", TINY, "-o", "train.epochs=2", "--out", str(run)]) == 0
    return run


def test_train_writes_run_folder(trained: Path) -> None:
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.json", "metrics.jsonl", "train.log"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_metric"] == "auc"
    assert 0.5 < metrics["auc"] <= 1.0
    assert {"logloss", "calibration", "calibration_bins", "samples"} <= set(metrics)
    evals = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evals] == [1, 2]
    ckpt = torch.load(trained / "last.pt", weights_only=False)
    assert ckpt["kit"] == "ctr" and ckpt["step"] == evals[-1]["step"]


def test_eval_matches_training_eval(cli, trained: Path) -> None:
    best = json.loads((trained / "metrics.json").read_text())
    code, out, err = cli("ctr", "eval", "--weights", trained / "best.pt")
    assert code == 0, err
    assert last_json(out)["auc"] == pytest.approx(best["auc"], abs=1e-6)


def test_resume_continues_exactly(cli, tmp_path: Path, trained: Path) -> None:
    """Two steps, then resume to the end of 2 epochs: same weights as one straight run."""
    run = tmp_path / "run"
    code, _, err = cli("ctr", "train", "-c", TINY, "-o", "train.max_steps=5", "--out", run)
    assert code == 0, err
    cfg = run / "config.yaml"
    text = (
        cfg.read_text().replace("max_steps: 5", "max_steps: null").replace("epochs: 1", "epochs: 2")
    )
    cfg.write_text(text)
    code, _, err = cli("ctr", "train", "--resume", run)
    assert code == 0, err
    a = torch.load(run / "last.pt", weights_only=False)
    b = torch.load(trained / "last.pt", weights_only=False)
    assert a["step"] == b["step"]
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-6)


def test_export_predict_serve(cli, trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    code, out, err = cli("ctr", "export", "--weights", trained, "--out", export)
    assert code == 0, err
    summary = last_json(out)
    assert summary["max_abs_diff"] < 1e-4
    manifest = json.loads((export / "sparse" / "manifest.json").read_text())
    assert manifest["format"] == "e2ekit-ctr-snapshots" and manifest["format_version"] == 1
    (base,) = manifest["versions"]
    assert base["kind"] == "base" and base["name"] == summary["model_version"]
    assert base["name"].startswith("step-") and base["meta"]["dense"] == "model.onnx"
    keys = np.load(export / "sparse" / base["dir"] / "keys.npy")
    values = np.load(export / "sparse" / base["dir"] / "values.npy")
    assert keys.shape[0] == values.shape[0] == base["rows"] == summary["sparse_rows"] > 0
    assert np.all(np.diff(keys) > 0) and values.shape[1] == manifest["width"]
    deploy = yaml.safe_load((export / "deploy.yaml").read_text())
    assert deploy["sparse"] == {
        "dir": "sparse",
        "format": "e2ekit-ctr-snapshots",
        "version": base["name"],
    }

    from e2ekit.ctr.data.splits import split_paths
    from e2ekit.ctr.kit import _load

    # exported store + ONNX == the PyTorch model on every val row (ids the export never saw
    # look up zeros, the model looks up its near-zero init rows: hence the tolerance)
    cfg_path = trained / "config.yaml"
    from e2ekit.core.config import load_config
    from e2ekit.ctr.config import CtrConfig

    cfg = load_config(cfg_path, CtrConfig, [])
    val = split_paths(cfg, "val")
    preds = {}
    for flag, value in (("--model", export), ("--weights", trained / "best.pt")):
        out_dir = tmp_path / f"pred{flag}"
        code, out, err = cli("ctr", "predict", flag, value, "--input", val, "--out", out_dir)
        assert code == 0, err
        result = last_json(out)
        assert result["rows"] == 1000
        lines = (out_dir / "predictions.tsv").read_text().splitlines()
        assert lines[0] == "prob\tlabel" and len(lines) == 1001
        preds[flag] = np.array([float(x.split("\t")[0]) for x in lines[1:]])
    np.testing.assert_allclose(preds["--model"], preds["--weights"], atol=1e-3)
    best = json.loads((trained / "metrics.json").read_text())
    assert result["auc"] == pytest.approx(best["auc"], abs=1e-3)
    del _load

    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.kit import get_kit
    from e2ekit.core.serve import ServeSettings, create_app

    kit = get_kit("ctr")
    predictor = Predictor(export)
    app = create_app(kit.endpoints(predictor), ServeSettings(), model_info={"kit": "ctr"})
    rows = Path(val).read_text().splitlines()[:3]
    with TestClient(app) as client:
        ok = client.post("/predict", json={"rows": rows}).json()
        assert len(ok["probs"]) == 3 and ok["model_version"] == base["name"]
        np.testing.assert_allclose(ok["probs"], preds["--model"][:3], atol=1e-5)
        nolabel = client.post("/predict", json={"rows": [r.split("\t", 1)[1] for r in rows]})
        np.testing.assert_allclose(nolabel.json()["probs"], ok["probs"], atol=1e-6)
        bad = client.post("/predict", json={"rows": ["1\t2\t3"]})
        assert bad.status_code == 422 and "fields" in bad.text
        assert client.post("/predict", json={"rows": []}).status_code == 422
        assert client.post("/predict", json={"rows": ["x" * 20_000]}).status_code == 413
        huge = rows[0].split("\t")
        huge[1] = "9" * 401  # I1: an integer no float holds
        r = client.post("/predict", json={"rows": [rows[1], "\t".join(huge)]})
        assert r.status_code == 422 and "row 1: I1" in r.text and "out of range" in r.text
        r = client.post("/predict", json={"rows": rows, "model_version": "x"})
        assert r.status_code == 422 and "model_version" in r.text
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["model_version"] == base["name"]
        demo = client.post("/predict", json=kit.demo_request(predictor.deploy))
        assert demo.status_code == 200 and len(demo.json()["probs"]) == 2


def test_async_hogwild_two_workers(cli, tmp_path: Path) -> None:
    run = tmp_path / "async"
    code, out, err = cli(
        "ctr", "train", "-c", TINY, "-o", "train.mode=async", "-o", "train.workers=2",
        "-o", "train.epochs=2", "-o", "export.snapshots=serving", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    metrics = last_json(out)
    assert metrics["auc"] > 0.55
    ckpt = torch.load(run / "last.pt", weights_only=False)
    # both workers trained: every row of both epochs counted once
    assert ckpt["rows_seen"] == 2 * 3000
    # the workers mark the rows they change in the shared mask: the second version's delta
    # rebuilds the final table
    from e2ekit.ctr.kv import MmapStore, read_manifest

    kinds = [e["kind"] for e in read_manifest(run / "serving" / "sparse")["versions"]]
    assert kinds == ["base", "delta"]
    table = ckpt["model"]["tables.embedding.weight"].numpy()
    touched = (ckpt["stepper"]["row_optimizer"]["state"]["exp_avg_sq"].sum(dim=1) > 0).numpy()
    keys = np.flatnonzero(touched)
    rows = MmapStore(run / "serving" / "sparse").lookup(keys)
    np.testing.assert_array_equal(rows, table[keys])


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed",
)
def test_ddp_two_ranks(tmp_path: Path) -> None:
    import subprocess

    torchrun = Path(sys.executable).parent / "torchrun"
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [
            str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "e2ekit",
            "ctr", "train", "-c", TINY, "-o", "train.mode=ddp", "-o", "train.threads=1",
            "--out", str(run),
        ],
        cwd=ROOT, env={**os.environ, "E2EKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auc"] > 0.5
    ckpt = torch.load(run / "last.pt", weights_only=False)
    # each rank parses its half (~1500 rows): 5 full batches of 256, the short one dropped
    assert ckpt["step"] == 5 and ckpt["rows_seen"] == 5 * 512


def test_malformed_rows_counted_and_reported(cli, tmp_path: Path, trained: Path) -> None:
    from e2ekit.core.config import load_config
    from e2ekit.ctr.config import CtrConfig
    from e2ekit.ctr.data.splits import split_paths

    cfg = load_config(trained / "config.yaml", CtrConfig, [])
    rows = Path(split_paths(cfg, "train")).read_text().splitlines()[:600]
    rows[10] = "2\t" + rows[10].split("\t", 1)[1]  # bad label
    rows[20] = "0\tabc" + rows[20].split("\t", 1)[1][1:]  # I1 not an integer
    rows[30] = "1\t2\t3"  # too few fields
    data = tmp_path / "bad.tsv"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    code, _, err = cli("ctr", "train", "-c", TINY, "-o", f"data.train={data}", "--out", run)
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert "597 rows from 1 file(s), 3 malformed" in log, log[-2000:]
    assert f"{data}:11" in log and f"{data}:31" in log
    code, _out, err = cli(
        "ctr", "train", "-c", TINY, "-o", f"data.train={data}", "-o", "data.max_bad_rows=1",
        "--out", tmp_path / "strict",
    )  # fmt: skip
    assert code == 1 and f"{data}:21" in err and "max_bad_rows=1" in err
    assert not (tmp_path / "strict" / "last.pt").exists()


@pytest.mark.skipif(not (SHARED_DATA / "ctr").is_dir(), reason="shared sample data not present")
def test_real_samples_train_and_eval(cli, tmp_path: Path) -> None:
    sample = SHARED_DATA / "ctr" / "paddlerec_sample"
    run = tmp_path / "real"
    code, out, err = cli(
        "ctr", "train", "-c", TINY, "-o", f"data.train={sample / 'sample_train.txt'}",
        "-o", f"data.val={sample / 'sample_test.txt'}", "-o", "train.batch_size=32",
        "-o", "train.epochs=3", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    metrics = last_json(out)
    assert metrics["samples"] == 100 and metrics["auc"] is not None
    csv = SHARED_DATA / "ctr" / "deepctr_sample" / "criteo_sample.txt"
    code, out, err = cli("ctr", "eval", "--weights", run / "best.pt", "-o", f"data.val={csv}")
    assert code == 0, err
    assert last_json(out)["samples"] == 200


def test_unknown_train_metric_is_an_error(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "ctr", "train", "-c", TINY, "-o", "train.metric=acu", "--out", tmp_path / "run"
    )
    assert code == 1 and "train.metric 'acu'" in err and "auc" in err


class _Killed(BaseException):
    """Stands in for kill -9: nothing after it runs (no Ctrl-C save)."""


def test_a_kill_around_the_final_saves_resumes_to_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the final evaluation's two saves, or after both (metrics.json still to
    come): the resumed run keeps a best.pt that holds the weights its best record names, and
    never evaluates a step twice."""
    from e2ekit.core.config import load_config
    from e2ekit.core.engine import run as run_module
    from e2ekit.core.engine.hooks import Hook
    from e2ekit.core.engine.run import RunOptions
    from e2ekit.ctr.config import CtrConfig
    from e2ekit.ctr.engine.fit import CtrTrainer

    cfg = load_config(TINY, CtrConfig, ["train.save_interval=1"])  # 12 steps, one evaluation
    CtrTrainer(cfg, tmp_path / "ref").fit()
    want_best = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)

    def evals(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "eval_seconds"} for x in lines]

    def resume_and_compare(run: Path) -> None:
        resumed = load_config(run / "config.yaml", CtrConfig, [])
        CtrTrainer(resumed, run, RunOptions(resume=True)).fit()
        assert evals(run) == evals(tmp_path / "ref")  # step 12 evaluated once
        best = torch.load(run / "best.pt", weights_only=True)
        assert best["step"] == want_best["step"] == 12
        for key, value in want_best["model"].items():
            assert torch.equal(best["model"][key], value), key

    class KillAfterFinalSaves(Hook):
        def after_checkpoint(self, trainer, path: str) -> None:  # type: ignore[no-untyped-def]
            if path.endswith("last.pt") and trainer.step == 12 and trainer.last_metrics:
                raise _Killed

    killed = CtrTrainer(cfg, tmp_path / "after")
    killed.hooks.append(KillAfterFinalSaves())
    with pytest.raises(_Killed):
        killed.fit()
    resume_and_compare(tmp_path / "after")

    written = []
    save = run_module.atomic_torch_save

    def killed_in_second_save(state: dict, path: Path) -> None:
        if state["step"] == 12 and state["metrics"]:  # the final evaluation's saves
            written.append(Path(path).name)
            if len(written) == 2:
                raise _Killed
        save(state, path)

    monkeypatch.setattr(run_module, "atomic_torch_save", killed_in_second_save)
    with pytest.raises(_Killed):
        CtrTrainer(cfg, tmp_path / "between").fit()
    monkeypatch.setattr(run_module, "atomic_torch_save", save)
    resume_and_compare(tmp_path / "between")


@pytest.mark.parametrize("content", ["", "x\ty\n1\t2\t3\n"], ids=["empty", "all-malformed"])
def test_predict_without_a_valid_row_writes_nothing(
    cli, trained: Path, tmp_path: Path, content: str
) -> None:
    """No header-only predictions.tsv: the failed command leaves no output folder at all."""
    source = tmp_path / "rows.tsv"
    source.write_text(content)
    out_dir = tmp_path / "pred"
    code, _, err = cli("ctr", "predict", "--weights", trained / "best.pt", "--input", source,
                       "--out", out_dir)  # fmt: skip
    assert code == 1 and "no valid rows" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.tsv"]


def test_a_run_of_a_few_steps_says_so(cli, tmp_path: Path) -> None:
    """3000 rows at batch 4096: one optimizer step; the log says it and how to fix it."""
    args = ("ctr", "train", "-c", TINY, "-o", "train.batch_size=4096")
    code, _, err = cli(*args, "--out", tmp_path / "few")
    assert code == 0, err
    assert "an epoch is 1 optimizer step(s), 1 in all" in err and "Lower train.batch_size" in err
    code, _, err = cli("ctr", "train", "-c", TINY, "--out", tmp_path / "enough")
    assert code == 0 and "too few to learn from" not in err
