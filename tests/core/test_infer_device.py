"""predict/serve/bench run where flags, ``-o infer.*`` and ``-c`` say, and report it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from e2ekit.core.cli import main, parse_verb
from e2ekit.core.infer import (
    OnnxRuntimeBackend,
    Predictor,
    TorchBackend,
    load_sample_inputs,
    onnxruntime_has_cuda,
)
from e2ekit.core.kit import get_kit
from e2ekit.core.verbs import ModulePredictor, make_predictor

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "toy" / "tiny.yaml")
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
no_gpu = pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny toy run, its export (int8 and torch weights included) and a predict input."""
    root = tmp_path_factory.mktemp("toy_infer")
    run, export = root / "run", root / "export"
    assert main(["toy", "train", "-c", TINY, "--out", str(run)]) == 0
    assert main(["toy", "export", "--weights", str(run), "--out", str(export), "--quantize"]) == 0
    rows = root / "rows.csv"
    np.savetxt(rows, np.random.default_rng(0).normal(size=(6, 16)), delimiter=",")
    return {"run": run, "export": export, "rows": rows}


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The torch backends set torch's process-wide thread count: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def build(verb: str = "predict", *argv: Any) -> Any:
    """The predictor ``e2ekit toy <verb> ARGV`` would run."""
    kit = get_kit("toy")
    _, args = parse_verb(kit, verb, [str(a) for a in argv])
    return make_predictor(kit, args)


def ort_threads(predictor: Predictor) -> int:
    return predictor.backend.session.get_session_options().intra_op_num_threads


def one_line_error(err: str, *needles: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# -- which predictor gets built ---------------------------------------------------------------
def test_export_defaults_to_onnxruntime_fp32_on_cpu(toy) -> None:
    p = build("predict", "--model", toy["export"])
    assert isinstance(p.backend, OnnxRuntimeBackend)
    assert p.backend.model_path.name == "model.onnx" and ort_threads(p) == 0
    assert p.runtime == {
        "backend": "onnxruntime",
        "device": "cpu",
        "precision": "fp32",
        "threads": None,
        "provider": "CPUExecutionProvider",
    }


def test_each_infer_override_changes_the_predictor(toy) -> None:
    model = ("--model", toy["export"])
    torch_p = build("predict", *model, "-o", "infer.backend=torch")
    assert torch_p.backend_name == "torch" and isinstance(torch_p.backend, TorchBackend)
    assert build("predict", *model, "-o", "infer.precision=int8").backend.model_path.name == (
        "model.int8.onnx"
    )
    assert ort_threads(build("predict", *model, "-o", "infer.num_threads=1")) == 1


def test_config_file_then_overrides_then_flags(toy, tmp_path: Path) -> None:
    """``-c``'s infer section applies (its other sections are not read for an export);
    ``-o`` wins over it and a flag over both."""
    cfg = tmp_path / "infer.yaml"
    cfg.write_text("infer:\n  precision: int8\n  num_threads: 3\nmodel:\n  hidden: 99\n")
    base = ("--model", toy["export"], "-c", cfg)
    from_file = build("predict", *base)
    assert from_file.backend.model_path.name == "model.int8.onnx" and ort_threads(from_file) == 3
    assert ort_threads(build("predict", *base, "-o", "infer.num_threads=2")) == 2
    flagged = build("predict", *base, "-o", "infer.num_threads=2", "--threads", "1")
    assert ort_threads(flagged) == 1 and flagged.precision == "int8"
    assert build("predict", *base, "--precision", "fp32").backend.model_path.name == "model.onnx"


def test_checkpoint_honours_threads_and_refuses_what_it_cannot_run(toy, cli) -> None:
    p = build("predict", "--weights", toy["run"], "-o", "infer.num_threads=1")
    assert isinstance(p, ModulePredictor) and torch.get_num_threads() == 1
    assert p.runtime == {
        "backend": "torch-checkpoint",
        "device": "cpu",
        "precision": "fp32",
        "threads": 1,
    }
    weights = ("toy", "predict", "--weights", toy["run"], "--input", toy["rows"])
    code, out, err = cli(*weights, "--backend", "onnxruntime")
    assert code == 1 and out == ""
    one_line_error(err, "--model EXPORT_DIR")
    code, _, err = cli(*weights, "-o", "infer.precision=int8")
    assert code == 1
    one_line_error(err, "export --quantize")


def test_export_refuses_keys_it_does_not_read(toy, cli) -> None:
    code, out, err = cli(
        "toy", "predict", "--model", toy["export"], "--input", toy["rows"], "-o", "data.x=1"
    )
    assert code == 1 and out == ""
    one_line_error(err, "data.x", "infer.*")


# -- what the summaries say ----------------------------------------------------------------
def test_predict_summary_names_backend_and_device(toy, cli, tmp_path: Path) -> None:
    args = ("toy", "predict", "--model", toy["export"], "--input", toy["rows"])
    code, out, err = cli(*args, "--backend", "torch", "--out", tmp_path / "torch")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["backend"], summary["device"], summary["rows"]) == ("torch", "cpu", 6)
    code, out, err = cli(*args, "--out", tmp_path / "ort")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["provider"] == "CPUExecutionProvider"
    # both backends predict the same classes
    read = [(tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in ("torch", "ort")]
    labels = [[json.loads(line)["label_id"] for line in rows] for rows in read]
    assert labels[0] == labels[1]


def test_serve_health_names_the_runtime(toy, cli, monkeypatch, tmp_path: Path) -> None:
    """``-c`` gives serve its infer and serve sections; /health says what runs."""
    from fastapi.testclient import TestClient

    served: dict[str, Any] = {}
    monkeypatch.setattr(
        "e2ekit.core.serve.run_server", lambda app, settings: served.update(app=app, s=settings)
    )
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("infer:\n  backend: torch\nserve:\n  max_batch_size: 4\n")
    code, _, err = cli(
        "toy", "serve", "--model", toy["export"], "-c", cfg, "-o", "infer.num_threads=1"
    )
    assert code == 0, err
    assert served["s"].max_batch_size == 4
    with TestClient(served["app"]) as client:
        health = client.get("/health").json()
    assert health["status"] == "ok"
    assert (health["backend"], health["device"], health["threads"]) == ("torch", "cpu", 1)


# -- cuda on a machine without one -------------------------------------------------------------
@no_gpu
@pytest.mark.parametrize(
    ("verb", "source", "extra"),
    [
        ("predict", "--model", ["--device", "cuda"]),
        ("predict", "--weights", ["--device", "cuda"]),
        ("serve", "--model", ["--device", "cuda"]),
        ("bench", "--model", ["--device", "cuda"]),
        ("bench", "--model", ["-o", "infer.device=cuda"]),
    ],
)
def test_cuda_without_a_gpu_is_one_line(toy, cli, verb: str, source: str, extra: list) -> None:
    path = toy["export"] if source == "--model" else toy["run"]
    inputs = ["--input", toy["rows"]] if verb == "predict" else []
    code, out, err = cli("toy", verb, source, path, *inputs, *extra)
    assert code == 1 and out == ""
    key = "--device" if "--device" in extra else "infer.device"
    one_line_error(err, f"{key}=cuda", "no usable CUDA device", f"{key}=cpu")


# -- on a GPU: the same answers as on the CPU ------------------------------------------------
def cpu_and_cuda(toy, *argv: Any) -> tuple[Any, Any, list[dict[str, np.ndarray]]]:
    cases = load_sample_inputs(toy["export"])
    cpu = build("predict", *argv, "--device", "cpu")
    cuda = build("predict", *argv, "--device", "cuda")
    return cpu, cuda, cases


def assert_same_outputs(cpu: Any, cuda: Any, cases: list[dict[str, np.ndarray]]) -> None:
    for case in cases:
        want, got = cpu.run(case), cuda.run(case)
        for name in want:
            assert isinstance(got[name], np.ndarray)
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)


@pytest.mark.gpu
@gpu
def test_torch_backend_on_cuda_matches_cpu(toy) -> None:
    cpu, cuda, cases = cpu_and_cuda(toy, "--model", toy["export"], "--backend", "torch")
    assert cuda.runtime["device"] == "cuda" and cuda.backend_name == "torch"
    assert next(cuda.backend.module.parameters()).is_cuda
    assert_same_outputs(cpu, cuda, cases)


@pytest.mark.gpu
@gpu
def test_onnxruntime_on_cuda_matches_cpu(toy, caplog) -> None:
    """onnxruntime-gpu runs on its CUDA provider; a CPU-only onnxruntime hands over to the
    export's torch weights on CUDA and says so."""
    with caplog.at_level(logging.INFO, logger="e2ekit"):
        cpu, cuda, cases = cpu_and_cuda(toy, "--model", toy["export"])
    assert cuda.device == "cuda"
    if onnxruntime_has_cuda():
        assert cuda.backend_name == "onnxruntime"
        assert cuda.runtime["provider"] == "CUDAExecutionProvider"
    else:
        assert cuda.backend_name == "torch"
        assert "pip install onnxruntime-gpu" in caplog.text
    assert_same_outputs(cpu, cuda, cases)


@pytest.mark.gpu
@gpu
def test_checkpoint_on_cuda_matches_cpu(toy) -> None:
    cpu, cuda, cases = cpu_and_cuda(toy, "--weights", toy["run"])
    assert cuda.runtime["device"] == "cuda" and cpu.runtime["device"] == "cpu"
    assert_same_outputs(cpu, cuda, cases)


@pytest.mark.gpu
@gpu
def test_int8_on_cuda_is_refused_and_auto_takes_the_gpu(toy, cli) -> None:
    args = ("toy", "predict", "--model", toy["export"], "--input", toy["rows"])
    code, _, err = cli(*args, "--device", "cuda", "--precision", "int8")
    assert code == 1
    one_line_error(err, "int8", "--device cpu")
    auto = build(
        "predict", "--model", toy["export"], "--backend", "torch", "-o", "infer.device=auto"
    )
    assert auto.device == "cuda"


@pytest.mark.gpu
@gpu
def test_bench_on_cuda_reports_its_device(toy, cli) -> None:
    fast = ("--seconds", "0.05", "--batch-sizes", "1")
    code, out, err = cli("toy", "bench", "--model", toy["export"], *fast, "--device", "cuda")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["device"] == "cuda"
    assert result["runtimes"]["torch"]["device"] == "cuda"
    assert "onnxruntime_int8" in result["skipped"]
    if onnxruntime_has_cuda():
        assert result["runtimes"]["onnxruntime_fp32"]["provider"] == "CUDAExecutionProvider"
    else:
        assert "onnxruntime-gpu" in result["skipped"]["onnxruntime_fp32"]
