"""The core's CUDA paths on the toy kit, and the helpers every kit's GPU tests share.

Train under bf16 and under fp16 (dynamic loss scaling), resume on the device, eval, export
(which checks its own parity) and predict on the device with the torch backend, the default
backend and a checkpoint, each compared with the CPU predictions of the same export.

``pytest -m gpu`` runs these on a CUDA machine. ``E2EKIT_TEST_DEVICE=cpu`` runs the same
code on the CPU as a dry run (fp16 then falls back to bf16, as the engine does there), so
the tests stay runnable where no GPU is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ..conftest import ROOT

DEVICE = os.environ.get("E2EKIT_TEST_DEVICE", "cuda")
GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
pytestmark = GPU_MARKS

AMPS = ("bf16", "fp16")
RUN_FILES = ("config.yaml", "best.pt", "last.pt", "metrics.json", "metrics.jsonl", "train.log")
# Training's own evaluation and a later `eval` run the same fp32 kernels on the same device.
EVAL_TOL = 1e-6 if DEVICE == "cpu" else 1e-3
TOY = str(ROOT / "configs" / "toy" / "tiny.yaml")
TOY_STEPS = ["-o", "train.max_steps=6", "-o", "train.eval_interval=3", "-o", "train.log_interval=2"]


# -- helpers shared by tests/<kit>/test_gpu.py --------------------------------------------------
def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 inside: device and CPU predictions must then agree to fp32 rounding, so a
    flipped label means a wrong device path, not TF32's 10-bit mantissa."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def amp_logged(amp: str) -> str:
    """The autocast dtype the engine logs for ``train.amp=amp`` on DEVICE (fp16 needs CUDA:
    on the CPU the engine trains in bf16 instead)."""
    return "torch.float16" if amp == "fp16" and DEVICE == "cuda" else "torch.bfloat16"


def train_runs(
    kit: str, args: list[str], root: Path, per_amp: dict[str, list[str]] | None = None
) -> dict[str, Path]:
    """One run per AMP mode on DEVICE, through the CLI (``per_amp``: extra arguments)."""
    from e2ekit.core.cli import main

    runs = {}
    for amp in AMPS:
        run = root / f"run_{amp}"
        overrides = ["-o", f"device={DEVICE}", "-o", f"train.amp={amp}"]
        overrides += (per_amp or {}).get(amp, [])
        assert main([kit, "train", *args, *overrides, "--out", str(run)]) == 0, amp
        runs[amp] = run
    return runs


def check_run(run: Path, amp: str) -> dict[str, Any]:
    """A complete run folder, trained on DEVICE under ``amp``, with finite losses and
    metrics; returns the last checkpoint (loaded onto the device it was saved from)."""
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    log = (run / "train.log").read_text()
    start = next(line for line in log.splitlines() if "device " in line and " amp " in line)
    assert re.search(rf"device {DEVICE}\b", start), start
    assert f"amp {amp_logged(amp)}" in start, start
    losses = [float(x) for x in re.findall(r" step \d+(?:/\d+)? loss (\S+)", log)]
    assert losses and all(math.isfinite(x) for x in losses), losses
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert evals
    for record in evals:
        numbers = [v for v in record.values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), record
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"]["device"] == DEVICE
    assert DEVICE in {t.device.type for t in ckpt["model"].values()}
    scaler = ckpt["stepper"]["scaler"] if "stepper" in ckpt else ckpt["scaler"]
    if amp_logged(amp) == "torch.float16":
        assert scaler is not None and scaler["scale"] > 0, scaler  # GradScaler state saved
    else:
        assert scaler is None
    return ckpt


def check_eval(cli: Any, kit: str, run: Path, metric: str, tol: float = EVAL_TOL) -> None:
    """``eval`` of best.pt on DEVICE reproduces the training run's best metric."""
    best = json.loads((run / "metrics.json").read_text())
    code, out, err = cli(kit, "eval", "--weights", run / "best.pt", "-o", f"device={DEVICE}")
    assert code == 0, err
    assert last_json(out)[metric] == pytest.approx(best[metric], abs=tol)


def export(cli: Any, kit: str, run: Path, out: Path) -> Path:
    """Export (the verb checks ONNX against PyTorch itself and fails past export.atol)."""
    code, stdout, err = cli(kit, "export", "--weights", run, "--out", out)
    assert code == 0, err
    assert math.isfinite(last_json(stdout)["max_abs_diff"])
    return out


def predict(
    cli: Any, kit: str, source: list[Any], inp: Path, out: Path, *flags: str
) -> tuple[int, dict[str, Any] | None, str]:
    """``predict`` from ``source`` (``--model DIR`` or ``--weights RUN``): code, summary, stderr."""
    code, stdout, err = cli(kit, "predict", *source, "--input", inp, "--out", out, *flags)
    return code, (last_json(stdout) if code == 0 else None), err


def predict_on(
    device: str, cli: Any, kit: str, source: list[Any], inp: Path, out: Path, *flags: str
) -> dict[str, Any]:
    """``predict --device device`` that must run there; returns its summary."""
    code, summary, err = predict(cli, kit, source, inp, out, "--device", device, *flags)
    assert code == 0 and summary is not None, err
    assert summary.get("device") == device, summary
    return summary


def predict_default_backend(cli: Any, kit: str, model: Path, inp: Path, out: Path) -> bool:
    """``predict --device DEVICE`` on the default backend (onnxruntime). Where onnxruntime
    cannot use the device (its CPU-only build beside a GPU), predict either runs the export
    on torch there, naming that backend in its summary, or refuses in one line that names
    onnxruntime-gpu. Either is right; True when it ran (predictions in ``out``)."""
    code, summary, err = predict(cli, kit, ["--model", model], inp, out, "--device", DEVICE)
    if code == 0:
        assert summary is not None and summary.get("device") == DEVICE, summary
        assert str(summary.get("backend")).startswith(("onnxruntime", "torch")), summary
        return True
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 1 and last.startswith("error:") and "onnxruntime-gpu" in last, err
    return False


# -- the toy kit ----------------------------------------------------------------------------------
def toy_scores(folder: Path) -> np.ndarray:
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return np.array([json.loads(x)["scores"] for x in lines])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with exact_fp32():  # for the whole module
        yield train_runs("toy", ["-c", TOY, *TOY_STEPS], tmp_path_factory.mktemp("toy_gpu"))


@pytest.mark.parametrize("amp", AMPS)
def test_train_on_device(runs: dict[str, Path], amp: str) -> None:
    ckpt = check_run(runs[amp], amp)
    assert ckpt["step"] == 6


def test_resume_on_device(cli, tmp_path: Path) -> None:
    """fp16 run resumed on the device: weights, optimizer and scaler state load there."""
    run = tmp_path / "resumed"
    code, _, err = cli(
        "toy", "train", "-c", TOY, *TOY_STEPS, "-o", "train.max_steps=3",
        "-o", f"device={DEVICE}", "-o", "train.amp=fp16", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 3", "max_steps: 6"))
    code, _, err = cli("toy", "train", "--resume", run)
    assert code == 0, err
    assert "resumed at step 3" in (run / "train.log").read_text()
    assert check_run(run, "fp16")["step"] == 6


def test_eval_on_device(cli, runs: dict[str, Path]) -> None:
    check_eval(cli, "toy", runs["bf16"], "accuracy")


def test_export_and_predict_on_device(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    from e2ekit.core.config import load_config
    from e2ekit.toy.kit import KIT
    from e2ekit.toy.task import ToyConfig

    run = runs["bf16"]
    model = export(cli, "toy", run, tmp_path / "export")
    inp = KIT.demo_input(load_config(run / "config.yaml", ToyConfig, []), tmp_path)
    summary = predict_on("cpu", cli, "toy", ["--model", model], inp, tmp_path / "cpu")
    assert summary["rows"] == 32 and summary["backend"] == "onnxruntime", summary
    cpu = toy_scores(tmp_path / "cpu")

    on_device = {
        "torch": (["--model", model], ["--backend", "torch"]),
        "checkpoint": (["--weights", run / "best.pt"], []),
    }
    for name, (source, flags) in on_device.items():
        summary = predict_on(DEVICE, cli, "toy", source, inp, tmp_path / name, *flags)
        assert summary["backend"].startswith("torch"), summary
        np.testing.assert_allclose(toy_scores(tmp_path / name), cpu, atol=1e-4, err_msg=name)
    if predict_default_backend(cli, "toy", model, inp, tmp_path / "default"):
        np.testing.assert_allclose(toy_scores(tmp_path / "default"), cpu, atol=1e-4)
