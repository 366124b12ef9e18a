"""``e2ekit <kit> bench`` on a toy export: every variant reported, skips explained, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "toy" / "tiny.yaml")
FAST = ("--seconds", "0.2", "--batch-sizes", "1,4", "--threads", "1")


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy export with int8 and torch weights (trained for one tiny epoch)."""
    from e2ekit.core.cli import main

    root = tmp_path_factory.mktemp("toy_bench")
    assert main(["toy", "train", "-c", TINY, "--out", str(root / "run")]) == 0
    out = root / "export"
    assert (
        main(["toy", "export", "--weights", str(root / "run"), "--out", str(out), "--quantize"])
        == 0
    )
    return out


def test_bench_reports_every_variant(cli, export: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    code, out, _ = cli("toy", "bench", "--model", export, *FAST, "--out", out_file)
    assert code == 0
    result = last_json(out)
    assert result == json.loads(out_file.read_text())
    assert result["batch_sizes"] == [1, 4] and result["skipped"] == {}
    assert set(result["results"]) == {"onnxruntime_fp32", "onnxruntime_int8", "torch"}
    assert result["device"] == "cpu" and result["threads"] == 1
    runtimes = result["runtimes"]
    assert {n: (r["backend"], r["precision"]) for n, r in runtimes.items()} == {
        "onnxruntime_fp32": ("onnxruntime", "fp32"),
        "onnxruntime_int8": ("onnxruntime", "int8"),
        "torch": ("torch", "fp32"),
    }
    assert all(r["device"] == "cpu" and r["threads"] == 1 for r in runtimes.values())
    assert runtimes["onnxruntime_fp32"]["provider"] == "CPUExecutionProvider"
    for per_batch in result["results"].values():
        assert set(per_batch) == {"1", "4"}
        for r in per_batch.values():
            assert r["items_per_s"] > 0 and r["calls"] >= 5
            assert 0 < r["ms_p50"] <= r["ms_p90"]
    speedup = result["speedup_vs_torch"]
    assert set(speedup) == {"onnxruntime_fp32", "onnxruntime_int8"}
    assert all(v > 0 for per_batch in speedup.values() for v in per_batch.values())


def test_bench_skips_what_the_folder_lacks(cli, export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fp32_only"
    shutil.copytree(export, folder)
    (folder / "weights.pt").unlink()
    deploy = (folder / "deploy.yaml").read_text()
    (folder / "deploy.yaml").write_text(deploy.replace("int8_model_file: model.int8.onnx\n", ""))
    code, out, _ = cli("toy", "bench", "--model", folder, *FAST)
    assert code == 0
    result = last_json(out)
    assert list(result["results"]) == ["onnxruntime_fp32"]
    assert set(result["skipped"]) == {"onnxruntime_int8", "torch"}
    assert "speedup_vs_torch" not in result


def test_bench_runs_the_variants_infer_names(cli, export: Path, tmp_path: Path) -> None:
    """infer.backend / infer.precision (from -o or -c) narrow the variants; threads apply."""
    fast = ("--seconds", "0.05", "--batch-sizes", "1")
    code, out, err = cli("toy", "bench", "--model", export, *fast, "-o", "infer.backend=torch")
    assert code == 0, err
    result = last_json(out)
    assert list(result["results"]) == ["torch"] and "speedup_vs_torch" not in result
    assert result["skipped"] == {
        "onnxruntime_fp32": "infer.backend is torch",
        "onnxruntime_int8": "infer.backend is torch",
    }
    cfg = tmp_path / "int8.yaml"
    cfg.write_text("infer:\n  precision: int8\n  num_threads: 1\n")
    code, out, err = cli("toy", "bench", "--model", export, *fast, "-c", cfg)
    assert code == 0, err
    result = last_json(out)
    assert list(result["results"]) == ["onnxruntime_int8"] and result["threads"] == 1
    code, out, err = cli(
        "toy", "bench", "--model", export, *fast, "-c", cfg, "-o", "infer.backend=torch"
    )
    assert code == 1 and out == "" and "no variant to benchmark" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--model is required"),
        (["--model", "{empty}"], "re-export"),
        (["--model", "{missing}"], "no such folder"),
        (["--model", "{export}", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["--model", "{export}", "--seconds", "0"], "--seconds"),
        (["--model", "{export}", "-o", "serve.port=1"], "serve.port"),
    ],
)
def test_bench_errors_are_one_line(
    cli, export: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    paths = {"empty": tmp_path, "missing": tmp_path / "nope", "export": export}
    code, out, err = cli("toy", "bench", *[a.format(**paths) for a in args])
    assert code == 1 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def test_bench_refuses_an_infer_key_it_would_ignore() -> None:
    """ctr's infer.kv says where predict and serve look rows up; bench never looks rows up."""
    from e2ekit.core.bench import refuse_kit_infer_keys
    from e2ekit.core.errors import ConfigError
    from e2ekit.ctr.config import CtrInfer

    refuse_kit_infer_keys(CtrInfer())  # the default: nothing to refuse
    with pytest.raises(ConfigError, match=r"infer\.kv: bench .* applies to predict and serve"):
        refuse_kit_infer_keys(CtrInfer(kv="redis://127.0.0.1:6379"))
