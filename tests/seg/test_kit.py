"""The seg kit end to end: train, eval, export, predict, serve; bad labels fail early."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "seg" / "tiny.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("seg") / "run"
    assert main(["seg", "train", "-c", TINY, "--out", str(run)]) == 0
    return run


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_eval_metrics(cli, trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_metric"] == "mIoU"
    assert {"mIoU", "acc", "kappa", "dice", "per_class_iou"} <= set(metrics)
    assert len(metrics["per_class_iou"]) == 4
    code, out, err = cli("seg", "eval", "--weights", trained / "best.pt")
    assert code == 0, err
    assert last_json(out)["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)


def test_export_predict_serve(cli, trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    code, out, err = cli("seg", "export", "--weights", trained, "--out", export)
    assert code == 0, err
    report = json.loads((export / "export_report.json").read_text())
    assert report["onnx"]["max_abs_diff"] < 1e-4
    assert report["argmax"]["label_map"]["mismatch_fraction"] <= 1e-3

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(64, 64), (50, 70)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            images / f"im{i}.png"
        )
    preds = {}
    for backend in ("onnxruntime", "torch"):
        out_dir = tmp_path / f"pred_{backend}"
        code, out, err = cli(
            "seg",
            "predict",
            "--model",
            export,
            "--backend",
            backend,
            "--input",
            images,
            "--out",
            out_dir,
        )
        assert code == 0, err
        assert last_json(out)["images"] == 2
        for sub in ("label", "pseudo_color", "overlay"):
            assert sorted(p.name for p in (out_dir / sub).iterdir()) == ["im0.png", "im1.png"]
        lab = np.array(Image.open(out_dir / "label" / "im1.png"))
        assert lab.shape == (50, 70) and lab.max() < 4
        preds[backend] = lab
    assert (preds["onnxruntime"] == preds["torch"]).mean() > 0.999
    # straight from the checkpoint (no export): the argmax the ONNX graph appends is applied too
    code, out, err = cli(
        "seg", "predict", "--weights", trained, "--input", images, "--out", tmp_path / "pred_ckpt"
    )
    assert code == 0, err
    lab = np.array(Image.open(tmp_path / "pred_ckpt" / "label" / "im1.png"))
    assert (lab == preds["onnxruntime"]).mean() > 0.999

    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.serve import create_app
    from e2ekit.seg.kit import KIT
    from e2ekit.seg.runner import rle_decode

    app = create_app(KIT.endpoints(Predictor(export)))
    png = (images / "im1.png").read_bytes()
    with TestClient(app) as client:
        r = client.post(
            "/predict", json={"image": base64.b64encode(png).decode(), "format": "both"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["height"], body["width"]) == (50, 70)
        assert (rle_decode(body["rle"]) == preds["onnxruntime"]).all()
        bad = client.post("/predict", json={"image": "not base64!"})
        assert bad.status_code == 422
        junk = client.post("/predict", json={"image": base64.b64encode(b"junk").decode()})
        assert junk.status_code == 422
        assert client.get("/health").status_code == 200


def test_export_static_int8_calibrates_on_val(cli, trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    code, out, err = cli(
        "seg", "export", "--weights", trained, "--out", export, "--quantize",
        "-o", "export.quantize_mode=static", "-o", "export.calibration_samples=5",
    )  # fmt: skip
    assert code == 0, err
    summary = last_json(out)
    assert summary["int8_mode"] == "static" and 0.0 <= summary["int8_mismatch_fraction"] <= 1.0
    int8 = json.loads((export / "export_report.json").read_text())["int8"]
    assert int8["calibration"]["cases"] == 5 and int8["cases"] == 5  # from the task's hook
    assert int8["calibration"]["source"] == "calibration_inputs"
    assert int8["passed"] and "Conv" in int8["op_types"]

    from e2ekit.core.infer import Predictor

    image = np.random.default_rng(0).standard_normal((1, 3, 48, 80)).astype(np.float32)
    got = Predictor(export, precision="int8")({"image": image})["label_map"]
    assert got.shape == (1, 48, 80) and got.max() < 4


def _write_dataset(root: Path, label: np.ndarray) -> None:
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "img" / "a.png")
    Image.fromarray(label).save(root / "lab" / "a.png")
    (root / "train.txt").write_text("img/a.png lab/a.png\n")
    (root / "val.txt").write_text("img/a.png lab/a.png\n")


@pytest.mark.parametrize(
    ("values", "needle"),
    [((0, 7), "7"), ((0, 255), "binary_255_to_1")],
)
def test_bad_labels_fail_before_training(
    cli, tmp_path: Path, values: tuple[int, int], needle: str
) -> None:
    label = np.full((32, 32), values[0], np.uint8)
    label[8:20, 8:20] = values[1]
    _write_dataset(tmp_path / "data", label)
    out = tmp_path / "run"
    classes = 3 if values[1] == 7 else 2
    code, _, err = cli(
        "seg",
        "train",
        "-c",
        TINY,
        "-o",
        f"data.root={tmp_path / 'data'}",
        "-o",
        f"data.num_classes={classes}",
        "--out",
        out,
    )
    assert code == 1
    assert needle in err and "a.png" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
