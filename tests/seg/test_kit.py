"""The seg kit end to end: train, eval, export, predict, serve; bad labels fail early."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ..conftest import ROOT
from ..core.test_hostile_inputs import png_bomb

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
        extra = client.post("/predict", json={"image": body["mask_png"], "colour": "red"})
        assert extra.status_code == 422 and "colour" in extra.text
        # 16000x16000 in 31 KB: refused from its header (never decoded: test_hostile_inputs)
        bomb = client.post(
            "/predict", json={"image": base64.b64encode(png_bomb(16000, 16000)).decode()}
        )
        assert bomb.status_code == 413 and "serve.max_image_pixels" in bomb.text
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


class PerPixel:
    """A predictor whose class at a pixel depends on that pixel alone, so predicting window
    by window must give exactly the whole-image answer; records every input's shape."""

    def __init__(self, output: str, transforms: list[dict[str, Any]], **test: Any) -> None:
        self.output = output
        self.deploy = {
            "num_classes": 4,
            "output": output,
            "output_name": "label_map" if output == "argmax" else "probs",
            "preprocess": {"transforms": transforms},
            "test": test,
        }
        self.shapes: list[tuple[int, ...]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["image"]
        self.shapes.append(x.shape)
        ids = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > x[:, 2])  # (B, H, W)
        if self.output == "argmax":
            return {"label_map": ids}
        return {"probs": np.eye(4, dtype=np.float32)[ids].transpose(0, 3, 1, 2)}


@pytest.mark.parametrize(
    ("output", "transforms", "test"),
    [
        ("argmax", [{"type": "Normalize"}], {}),
        ("probs", [{"type": "Resize", "target_size": [60, 50]}, {"type": "Normalize"}],
         {"flip_horizontal": True, "flip_vertical": True}),
    ],
)  # fmt: skip
def test_large_images_run_window_by_window(
    output: str, transforms: list, test: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2ekit.seg import runner
    from e2ekit.seg.runner import SegRunner

    monkeypatch.setattr(runner, "WINDOW_BATCH_PIXELS", 3 * 24 * 16)  # 3 windows per call
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 70, 90), np.uint8))
    whole = SegRunner(PerPixel(output, transforms, **test)).predict_image(image)
    limits = {"max_whole_pixels": 500, "crop_size": [24, 16], "stride": [17, 11]}
    model = PerPixel(output, transforms, **test, **limits)
    tiled = SegRunner(model).predict_image(image)
    assert tiled.shape == whole.shape == (70, 90)
    assert (tiled == whole).all()
    assert sum(s[0] for s in model.shapes) > 12  # windows, in calls of at most three
    assert max(s[-2] * s[-1] for s in model.shapes) <= 24 * 16
    assert max(s[0] for s in model.shapes) == 3


def test_a_thin_image_takes_few_model_calls() -> None:
    """A 1-pixel-wide strip is thousands of windows: batched, not one call each."""
    from e2ekit.seg.runner import SegRunner

    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 6000, 1), np.uint8))
    limits = {"max_whole_pixels": 500, "crop_size": [16, 24], "stride": [16, 24]}
    whole = SegRunner(PerPixel("argmax", [{"type": "Normalize"}])).predict_image(image)
    model = PerPixel("argmax", [{"type": "Normalize"}], **limits)
    tiled = SegRunner(model).predict_image(image)
    assert (tiled == whole).all()
    assert sum(s[0] for s in model.shapes) == 250 and len(model.shapes) == 1


def test_predict_limits_are_config_keys(
    cli, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2ekit.seg.runner import SegRunner

    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a", (40, 40)), ("b", (64, 80))):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "refused"
    code, _, err = cli(
        "seg", "predict", "--weights", trained, "--input", images, "--out", out,
        "-o", "test.max_image_pixels=5000",
    )  # fmt: skip
    assert code == 1 and "b.png is 80x64" in err and "(test.max_image_pixels)" in err, err
    assert not out.exists()  # refused from the headers before any image ran

    shapes: list[tuple[int, ...]] = []
    run = SegRunner._run

    def recording(self: SegRunner, batch: torch.Tensor) -> np.ndarray:
        shapes.append(tuple(batch.shape))
        return run(self, batch)

    monkeypatch.setattr(SegRunner, "_run", recording)
    out = tmp_path / "tiled"
    code, _, err = cli(
        "seg", "predict", "--weights", trained, "--input", images, "--out", out,
        "-o", "test.max_whole_pixels=2000", "-o", "test.crop_size=[32,32]",
        "-o", "test.stride=[24,24]",
    )  # fmt: skip
    assert code == 0, err
    assert (1, 3, 40, 40) in shapes  # 1600 pixels: whole
    assert sorted(set(shapes) - {(1, 3, 40, 40)}) == [(9, 3, 32, 32)]  # 80x64: 9 windows
    assert np.array(Image.open(out / "label" / "b.png")).shape == (64, 80)


# Predicts argv[3] with the export argv[1] into argv[4]; prints the MB that added to the
# process's peak, measured after predicting the small argv[2] has loaded everything else.
PEAK_SCRIPT = """
import resource, sys
from e2ekit.core.cli import main
model, small, big, out = sys.argv[1:]
assert main(["seg", "predict", "--model", model, "--input", small, "--out", out + "_warm"]) == 0
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert main(["seg", "predict", "--model", model, "--input", big, "--out", out]) == 0
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.slow
def test_predict_memory_is_bounded_on_a_large_image(cli, trained: Path, tmp_path: Path) -> None:
    """8000x8000 (192 MB as RGB): the model sees windows, outputs are built by row blocks."""
    export = tmp_path / "export"
    assert cli("seg", "export", "--weights", trained, "--out", export)[0] == 0
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8))
    small.save(tmp_path / "small.png")
    small.resize((8000, 8000), Image.NEAREST).save(tmp_path / "big.png", compress_level=1)
    paths = [export, tmp_path / "small.png", tmp_path / "big.png", tmp_path / "pred"]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *map(str, paths)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mb = float(done.stdout.strip().splitlines()[-1])
    assert grown_mb < 1500, f"predict on 8000x8000 grew the process by {grown_mb:.0f} MB"
    assert np.array(Image.open(tmp_path / "pred" / "label" / "big.png")).shape == (8000, 8000)


def test_predict_stopped_by_a_corrupt_image_leaves_no_outputs(
    cli, trained: Path, tmp_path: Path
) -> None:
    """Good images first, then one whose header reads but whose pixels do not decode: no
    half folder of label maps."""
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)
    for name in ("a", "b", "c_corrupt"):
        Image.fromarray(noise).save(images / f"{name}.png")
    raw = (images / "c_corrupt.png").read_bytes()
    (images / "c_corrupt.png").write_bytes(raw[: len(raw) // 2])  # cut inside its pixel data
    out = tmp_path / "pred"
    code, _, err = cli("seg", "predict", "--weights", trained, "--input", images, "--out", out)
    assert code == 1 and "c_corrupt.png" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_eval_out_draws_a_confusion_matrix_and_iou_bars(cli, trained, tmp_path) -> None:
    from PIL import Image

    code, _, err = cli("seg", "eval", "--weights", trained / "best.pt", "--out", tmp_path / "ev")
    assert code == 0, err
    for name in ("confusion_matrix.png", "per_class_iou.png"):
        with Image.open(tmp_path / "ev" / name) as im:
            assert im.format == "PNG" and im.width > 300, name
