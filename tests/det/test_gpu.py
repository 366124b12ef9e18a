"""The det kit on a CUDA device: tiny YOLOv3 trained under bf16 and fp16, evaluated,
exported, and its detections predicted there matching the CPU's (``E2EKIT_TEST_DEVICE=cpu``:
a dry run of the same code, see tests/core/test_gpu.py).

The det export has no torch weights, so the torch path on the device is the checkpoint's
(``predict --weights``), and the default backend may refuse cuda (no torch weights to fall
back to) where onnxruntime has no CUDA provider."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

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
TINY = str(ROOT / "configs" / "det" / "tiny.yaml")
# The bf16 run, whose detections are compared, trains until its scores pass the default
# 0.01 threshold and differ from box to box (4 steps leave none); the fp16 run stays short.
LONGER = ["-o", "train.max_steps=40", "-o", "train.eval_interval=40", "-o", "optim.lr=0.003"]
STEPS = {"bf16": 40, "fp16": 4}
# The same detection: same class, boxes within a pixel, scores within fp32 noise.
MIN_IOU, SCORE_TOL = 0.95, 1e-3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with exact_fp32():  # for the whole module
        yield train_runs("det", ["-c", TINY], tmp_path_factory.mktemp("det_gpu"), {"bf16": LONGER})


@pytest.mark.parametrize("amp", AMPS)
def test_train_on_device(runs: dict[str, Path], amp: str) -> None:
    assert check_run(runs[amp], amp)["step"] == STEPS[amp]


def test_eval_on_device(cli, runs: dict[str, Path]) -> None:
    check_eval(cli, "det", runs["bf16"], "mAP")


def detections(folder: Path) -> list[list[dict]]:
    rows = (folder / "predictions.jsonl").read_text().splitlines()
    return [json.loads(row)["detections"] for row in rows]


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def matched_share(got: list[list[dict]], want: list[list[dict]]) -> float:
    """Share of all detections (both sides) that pair up one-to-one as the same detection;
    1.0 when neither side has any. Tolerant of order (near-equal scores may swap in NMS)."""
    pairs = total = 0
    for g_img, w_img in zip(got, want, strict=True):
        total += len(g_img) + len(w_img)
        free = list(w_img)
        for g in g_img:
            for w in free:
                if (
                    g["class_id"] == w["class_id"]
                    and abs(g["score"] - w["score"]) <= SCORE_TOL
                    and iou(g["box"], w["box"]) >= MIN_IOU
                ):
                    free.remove(w)
                    pairs += 1
                    break
    return 2 * pairs / total if total else 1.0


def test_export_and_predict_on_device(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    from e2ekit.core.config import load_config
    from e2ekit.det.config import DetConfig
    from e2ekit.det.task import DetTask

    run = runs["bf16"]
    model = export(cli, "det", run, tmp_path / "export")
    task = DetTask(load_config(run / "config.yaml", DetConfig, []))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{r.file}\n" for r in task.det_dataset("val").records[:4]))
    summary = predict_on("cpu", cli, "det", ["--model", model], listing, tmp_path / "cpu")
    assert summary["images"] == 4 and summary["backend"] == "onnxruntime", summary
    cpu = detections(tmp_path / "cpu")
    assert any(cpu), "no detections to compare"

    checkpoint = ["--weights", run / "best.pt"]
    predict_on(DEVICE, cli, "det", checkpoint, listing, tmp_path / "checkpoint")
    assert matched_share(detections(tmp_path / "checkpoint"), cpu) >= 0.95
    if predict_default_backend(cli, "det", model, listing, tmp_path / "default"):
        assert matched_share(detections(tmp_path / "default"), cpu) >= 0.95
    assert matched_share(cpu[1:] + cpu[:1], cpu) < 0.5  # other images' boxes do not match
