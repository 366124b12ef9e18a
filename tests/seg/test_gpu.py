"""The seg kit on a CUDA device: tiny PP-LiteSeg trained under bf16 and fp16, evaluated,
exported, and its label maps predicted there equal to the CPU's (``E2EKIT_TEST_DEVICE=cpu``:
a dry run of the same code, see tests/core/test_gpu.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
TINY = str(ROOT / "configs" / "seg" / "tiny.yaml")
SIZES = [(64, 64), (50, 70)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with exact_fp32():  # for the whole module
        yield train_runs("seg", ["-c", TINY], tmp_path_factory.mktemp("seg_gpu"))


@pytest.mark.parametrize("amp", AMPS)
def test_train_on_device(runs: dict[str, Path], amp: str) -> None:
    assert check_run(runs[amp], amp)["step"] == 4


def test_eval_on_device(cli, runs: dict[str, Path]) -> None:
    check_eval(cli, "seg", runs["bf16"], "mIoU")


def labels(folder: Path) -> np.ndarray:
    return np.concatenate(
        [np.array(Image.open(folder / "label" / f"im{i}.png")).ravel() for i in range(len(SIZES))]
    )


def test_export_and_predict_on_device(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["bf16"]
    model = export(cli, "seg", run, tmp_path / "export")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(SIZES):
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"im{i}.png")
    summary = predict_on("cpu", cli, "seg", ["--model", model], images, tmp_path / "cpu")
    assert summary["images"] == 2 and summary["backend"] == "onnxruntime", summary
    cpu = labels(tmp_path / "cpu")

    on_device = {
        "torch": (["--model", model], ["--backend", "torch"]),
        "checkpoint": (["--weights", run / "best.pt"], []),
    }
    for name, (source, flags) in on_device.items():
        predict_on(DEVICE, cli, "seg", source, images, tmp_path / name, *flags)
        assert (labels(tmp_path / name) == cpu).mean() > 0.995, name
    if predict_default_backend(cli, "seg", model, images, tmp_path / "default"):
        assert (labels(tmp_path / "default") == cpu).mean() > 0.995
