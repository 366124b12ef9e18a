"""The ctr kit on a CUDA device: tiny DeepFM trained (sync mode, table and optimizers on
the device) under bf16 and fp16, evaluated, exported, and its click probabilities predicted
there equal to the CPU's (``E2EKIT_TEST_DEVICE=cpu``: a dry run of the same code, see
tests/core/test_gpu.py).

The ctr export is a dense ONNX graph plus a sparse store, without torch weights, so the
torch path on the device is the checkpoint's (``predict --weights``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ..conftest import ROOT
from ..core.test_gpu import (
    AMPS,
    DEVICE,
    GPU_MARKS,
    check_eval,
    check_run,
    exact_fp32,
    export,
    predict_default_backend,
    predict_on,
    train_runs,
)

pytestmark = GPU_MARKS
TINY = str(ROOT / "configs" / "ctr" / "tiny.yaml")
STEPS = ["-o", "train.max_steps=6", "-o", "train.eval_interval=3", "-o", "train.log_interval=2"]
# Ids the export never saw look up zeros in the store, the model its near-zero init rows.
PROB_TOL = 1e-3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with exact_fp32():  # for the whole module
        yield train_runs("ctr", ["-c", TINY, *STEPS], tmp_path_factory.mktemp("ctr_gpu"))


@pytest.mark.parametrize("amp", AMPS)
def test_train_on_device(runs: dict[str, Path], amp: str) -> None:
    ckpt = check_run(runs[amp], amp)
    assert ckpt["step"] == 6 and ckpt["kit"] == "ctr"


def test_eval_on_device(cli, runs: dict[str, Path]) -> None:
    check_eval(cli, "ctr", runs["bf16"], "auc")


def probs(folder: Path) -> np.ndarray:
    lines = (folder / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "prob\tlabel"
    return np.array([float(x.split("\t")[0]) for x in lines[1:]])


def test_export_and_predict_on_device(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    from e2ekit.core.config import load_config
    from e2ekit.ctr.config import CtrConfig
    from e2ekit.ctr.data.splits import split_paths

    run = runs["bf16"]
    model = export(cli, "ctr", run, tmp_path / "export")
    val = split_paths(load_config(run / "config.yaml", CtrConfig, []), "val")
    assert val is not None
    inp = Path(val)
    summary = predict_on("cpu", cli, "ctr", ["--model", model], inp, tmp_path / "cpu")
    assert summary["rows"] == 1000 and summary["backend"] == "onnxruntime", summary
    cpu = probs(tmp_path / "cpu")
    assert cpu.std() > 0  # the rows differ: the comparison below means something

    checkpoint = ["--weights", run / "best.pt"]
    summary = predict_on(DEVICE, cli, "ctr", checkpoint, inp, tmp_path / "checkpoint")
    assert summary["backend"].startswith("torch"), summary
    np.testing.assert_allclose(probs(tmp_path / "checkpoint"), cpu, atol=PROB_TOL)
    if predict_default_backend(cli, "ctr", model, inp, tmp_path / "default"):
        np.testing.assert_allclose(probs(tmp_path / "default"), cpu, atol=PROB_TOL)
