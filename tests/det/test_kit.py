"""The det kit end to end on tiny data: train, eval, export with and without NMS (parity),
predict (drawn images), serve, preview and convert; bad annotations fail before training."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ..conftest import ROOT, SHARED_DATA
from ..core.test_hostile_inputs import png_bomb

TINY = str(ROOT / "configs" / "det" / "tiny.yaml")


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convs on a busy 2-core box: one thread avoids spinning against the other
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("det") / "run"
    assert main(["det", "train", "-c", TINY, "--out", str(run)]) == 0
    return run


def test_train_eval(cli, trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_metric"] == "mAP"
    assert {"mAP", "AP50", "AP75", "per_class_ap"} <= set(metrics)
    code, out, err = cli("det", "eval", "--weights", trained / "best.pt", "--classwise")
    assert code == 0, err
    result = last_json(out)
    assert result["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)
    assert set(result["per_class_ap"]) == {"circle", "square", "triangle", "cross"}


@pytest.mark.parametrize("nms", [True, False])
def test_export_predict(cli, trained: Path, tmp_path: Path, nms: bool) -> None:
    export = tmp_path / "export"
    code, out, err = cli(
        "det", "export", "--weights", trained, "-o", f"export.nms={str(nms).lower()}",
        "--out", export,
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out)["max_abs_diff"] < 1e-3
    deploy = (export / "deploy.yaml").read_text()
    assert "class_names" in deploy
    from e2ekit.core.infer import load_deploy

    outputs = [o["name"] for o in load_deploy(export)["outputs"]]
    padded = ["boxes", "scores", "labels", "num_detections"]
    assert outputs == (padded if nms else ["boxes", "scores"])

    from e2ekit.core.config import load_config
    from e2ekit.det.config import DetConfig
    from e2ekit.det.task import DetTask

    task = DetTask(load_config(trained / "config.yaml", DetConfig, []))
    images = [r.file for r in task.det_dataset("val").records[:3]]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    code, out, err = cli(
        "det", "predict", "--model", export, "--input", listing, "--out", tmp_path / "pred",
        "--draw-threshold", "0.0",
    )  # fmt: skip
    assert code == 0, err
    summary = last_json(out)
    assert summary["images"] == 3
    rows = [
        json.loads(x) for x in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 3 and all("detections" in r for r in rows)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3
    # --draw-threshold 0 draws every detection that predictions.jsonl lists
    assert summary["boxes_drawn"] == sum(len(r["detections"]) for r in rows)


class FixedDetections:
    """A predictor that finds the same two boxes (scores 0.9 and 0.5) in every image."""

    deploy = {
        "kit": "det",
        "preprocess": {"resize": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1]},
        "class_names": ["a", "b"],
        "nms": True,
        "draw_threshold": 0.3,
    }

    def run(self, inputs: dict) -> dict:
        boxes = np.array([[1, 1, 10, 10], [5, 5, 30, 20]], np.float32)
        return {"boxes": boxes, "scores": np.array([0.9, 0.5], np.float32), "labels": [0, 1]}


@pytest.mark.parametrize(("options", "drawn"), [({"draw_threshold": 0.6}, 1), ({}, 2)])
def test_predict_draws_above_the_threshold_option(
    tmp_path: Path, options: dict, drawn: int
) -> None:
    """``options['draw_threshold']`` (``predict --draw-threshold``), else the export's."""
    from PIL import Image

    from e2ekit.det.kit import KIT

    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "pred"
    summary = KIT.predict(FixedDetections(), tmp_path / "a.png", out, options)
    assert summary["boxes_drawn"] == drawn and (out / "a.png").is_file()
    rows = (out / "predictions.jsonl").read_text().splitlines()
    assert len(json.loads(rows[0])["detections"]) == 2  # the JSON keeps every detection


def test_export_static_int8_with_nms(cli, trained: Path, tmp_path: Path) -> None:
    """Static int8 (the det default mode) calibrates on real train images; int8 may keep
    other boxes than fp32, so the padded NMS outputs are compared by their count per image
    (the share of images whose count changed is reported, not an error); predict runs on it,
    a batch per call."""
    export = tmp_path / "export"
    code, out, err = cli(
        "det", "export", "--weights", trained, "--quantize", "--out", export,
    )  # fmt: skip
    assert code == 0, err
    summary = last_json(out)
    # padded rows are a set of detections: compared by their count per image, not row by row
    assert summary["int8_mode"] == "static" and summary["int8_max_abs_diff"] is None
    assert 0 <= summary["int8_mismatch_fraction"] <= 1
    changed, cases = summary["int8_cases_length_changed"].split("/")
    assert 0 <= int(changed) <= int(cases) == 16
    report = json.loads((export / "export_report.json").read_text())["int8"]
    assert 0 <= report["per_output"]["num_detections"]["mismatch_fraction"] <= 1
    assert report["per_output"]["boxes"]["variable_length"] is True
    assert report["calibration"]["source"] == "calibration_inputs"
    assert report["cases"] == 16  # tiny.yaml's train split: 16 images (calibration_samples 32)
    assert len(report["float_nodes"]) == 3  # YOLOv3 keeps its three output convs float
    from e2ekit.core.infer import Predictor
    from e2ekit.det.runner import DetRunner

    runner = DetRunner(Predictor(export, precision="int8"))
    image = torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8)
    got, other = runner.detect_batch([image, torch.flip(image, dims=[2])])
    assert got["boxes"].shape[1:] == (4,) and len(got["scores"]) == len(got["labels"])
    assert (got["boxes"][:, 2] <= 90).all() and (got["boxes"][:, 3] <= 70).all()
    assert other["boxes"].shape[1:] == (4,) and len(other["scores"]) == len(other["labels"])


def test_quantize_counts_variable_output_shapes(tmp_path: Path) -> None:
    """A data-dependent output (like NMS's detections) may differ in length after int8."""
    from torch import nn

    from e2ekit.core.engine.task import ExportSpec
    from e2ekit.core.export import quantize_int8

    class Thresholded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            y = self.conv(image).flatten()
            return y[y > 0.0]  # count depends on values: int8 rounding can change it

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    spec = ExportSpec(
        module=Thresholded().eval(),
        example_inputs={"image": torch.randn(1, 3, 8, 8, generator=g)},
        output_names=["values"],
        dynamic_axes={"values": {0: "kept"}},
        deploy={"kit": "test"},
    )
    spec.export(tmp_path, opset=17, atol=1e-4)
    calib = [{"image": torch.randn(1, 3, 8, 8, generator=g).numpy()} for _ in range(8)]
    section = quantize_int8(tmp_path, mode="static", calibration_inputs=calib)
    assert section["passed"]
    assert (tmp_path / "model.int8.onnx").is_file()
    entry = section["per_output"]["values"]
    assert entry["variable_length"] is True and 0 <= entry["length_changed_cases"] <= 8
    assert section["max_abs_diff"] is None  # no fixed-shape output to diff


def test_serve(trained: Path, tmp_path: Path, cli) -> None:
    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.kit import get_kit
    from e2ekit.core.serve import ServeSettings, create_app

    export = tmp_path / "export"
    code, _, err = cli("det", "export", "--weights", trained, "--out", export)
    assert code == 0, err
    kit = get_kit("det")
    predictor = Predictor(export)
    app = create_app(kit.endpoints(predictor), ServeSettings(), model_info={"kit": "det"})
    with TestClient(app) as client:
        ok = client.post("/predict", json=kit.demo_request(predictor.deploy))
        assert ok.status_code == 200 and isinstance(ok.json()["detections"], list)
        bad = client.post("/predict", json={"image": base64.b64encode(b"not an image").decode()})
        assert bad.status_code == 422
        assert client.post("/predict", json={"image": "%%%"}).status_code == 422
        image = kit.demo_request(predictor.deploy)["image"]
        extra = client.post("/predict", json={"image": image, "format": "gif"})
        assert extra.status_code == 422 and "format" in extra.text
        # 16000x16000 in 31 KB: refused from its header (never decoded: test_hostile_inputs)
        bomb = client.post(
            "/predict", json={"image": base64.b64encode(png_bomb(16000, 16000)).decode()}
        )
        assert bomb.status_code == 413 and "serve.max_image_pixels" in bomb.text


def test_predict_refuses_images_over_the_limit(cli, trained: Path, tmp_path: Path) -> None:
    """``predict.max_image_pixels`` is checked on every header before any image runs."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(images / "b.png")
    common = ("det", "predict", "--weights", trained, "--input", images)
    out = tmp_path / "refused"
    code, _, err = cli(*common, "--out", out, "-o", "predict.max_image_pixels=2000")
    assert code == 1 and "b.png is 64x40 (2560 pixels)" in err, err
    assert "(predict.max_image_pixels)" in err and not out.exists()
    code, out_text, err = cli(
        *common, "--out", tmp_path / "ok", "-o", "predict.max_image_pixels=2560"
    )
    assert code == 0 and last_json(out_text)["images"] == 2, err


def test_image_field_errors_are_4xx_naming_the_field() -> None:
    """The one base64 image decoder both vision kits serve with."""
    from e2ekit.core.imageio import decode_image_field, encode_png
    from e2ekit.core.serve import BadRequest

    png = base64.b64encode(encode_png(np.zeros((6, 5, 3), np.uint8))).decode()
    assert tuple(decode_image_field(png).shape) == (3, 6, 5)
    cases = [
        ("%%%", {}, 422, "'image' is not valid base64"),
        (base64.b64encode(b"junk").decode(), {}, 422, "'image' could not be decoded"),
        (
            png,
            {"max_pixels": 29},
            413,
            r"'image' is 5x6 \(30 pixels\), over the limit of 29 pixels "
            r"\(serve.max_image_pixels\)",
        ),
    ]
    for value, kw, status, message in cases:
        with pytest.raises(BadRequest, match=message) as info:
            decode_image_field(value, **kw)
        assert info.value.status_code == status


def test_preview_and_convert(cli, tmp_path: Path) -> None:
    code, out, err = cli("det", "preview", "-c", TINY, "--out", tmp_path / "pv", "--limit", "2")
    assert code == 0, err
    assert len(list((tmp_path / "pv").glob("*.png"))) == 2
    summary = json.loads(out.strip().splitlines()[-1])
    from e2ekit.core.config import load_config
    from e2ekit.det.config import DetConfig
    from e2ekit.det.task import DetTask

    records = DetTask(load_config(TINY, DetConfig, [])).det_dataset("train").records
    assert summary["images"] == 2 and summary["of_images"] == len(records)
    assert summary["boxes"] == sum(len(r.boxes) for r in records[:2])  # only what it drew

    shapes = {"shapes": [{"label": "cat", "shape_type": "rectangle", "points": [[1, 2], [30, 40]]}]}
    shapes.update(imagePath="a.png", imageHeight=50, imageWidth=60)
    labelme = tmp_path / "labelme"
    labelme.mkdir()
    (labelme / "a.json").write_text(json.dumps(shapes))
    code, out, err = cli(
        "det", "convert", "--from", "labelme", "--input", labelme, "--out", tmp_path / "c.json"
    )
    assert code == 0, err
    result = last_json(out)
    assert result["images"] == 1 and result["annotations"] == 1 and result["categories"] == ["cat"]


def test_drawing_scales_with_the_image_and_fills_caption_tags() -> None:
    from e2ekit.det.runner import PALETTE, caption_font, draw

    assert caption_font() is not None  # a scalable font ships with the dependencies
    for side in (120, 1200):
        image = torch.full((3, side, side), 255, dtype=torch.uint8)
        box = np.array([[side * 0.2, side * 0.3, side * 0.8, side * 0.9]], np.float32)
        out = draw(image, box, ["cat 0.91"], None, [3])
        changed = (out != image).any(0)
        column = changed[:, int(side * 0.5)].nonzero().flatten()  # the top edge, at mid-width
        top = column[column < side * 0.5]
        assert len(top) >= max(2, round(side / 250))  # the line thickens with the image
        w, top, left = max(2, round(side / 250)), int(side * 0.3), int(side * 0.2)
        font = max(11, round(side / 45))  # the caption's band inside the box's top left
        corner = out[:, top + w : top + w + font + 4, left + w : left + w + side // 8]
        colour = torch.tensor(PALETTE[3], dtype=torch.uint8)[:, None, None]
        assert (corner == colour).all(0).float().mean() > 0.3  # a tag of the class colour


def test_bad_annotations_fail_before_training(cli, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(coco))
    run = tmp_path / "run"
    code, _, err = cli(
        "det", "train", "-c", TINY, "-o", f"data.train_ann={ann}",
        "-o", f"data.train_images={images}", "-o", f"data.val_ann={ann}",
        "-o", f"data.val_images={images}", "--out", run,
    )  # fmt: skip
    assert code == 1 and "drop_invalid" in err
    assert not (run / "last.pt").exists()


@pytest.mark.skipif(not (SHARED_DATA / "det").is_dir(), reason="shared sample data not present")
def test_voc_sample_trains_with_drop_invalid(cli, tmp_path: Path) -> None:
    """The real BCCD VOC sample: its zero-size box fails by default, drop_invalid trains."""
    root = SHARED_DATA / "det" / "bccd_voc" / "BCCD"
    labels = tmp_path / "label_list.txt"
    labels.write_text("RBC\nWBC\nPlatelets\n")
    common = [
        "-c", TINY, "-o", "data.format=voc", "-o", f"data.root={root}",
        "-o", "data.train_list=ImageSets/Main/val.txt",
        "-o", "data.val_list=ImageSets/Main/test.txt",
        "-o", f"data.label_list={labels}", "-o", "train.max_steps=2", "-o", "train.eval_interval=2",
    ]  # fmt: skip
    code, _, err = cli("det", "train", *common, "--out", tmp_path / "strict")
    assert code == 1 and "BloodImage_00338" in err
    code, out, err = cli(
        "det", "train", *common, "-o", "data.drop_invalid=true", "--out", tmp_path / "run"
    )
    assert code == 0, err
    assert set(last_json(out)["per_class_ap"]) == {"RBC", "WBC", "Platelets"}


def test_eval_out_draws_pr_curves_ap_bars_and_a_confusion_matrix(cli, trained, tmp_path) -> None:
    from PIL import Image

    code, _, err = cli("det", "eval", "--weights", trained, "--out", tmp_path / "ev")
    assert code == 0, err
    for name in ("pr_curves.png", "per_class_ap.png", "confusion_matrix.png"):
        with Image.open(tmp_path / "ev" / name) as im:
            assert im.format == "PNG" and im.width > 300, name
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_box_confusion_matrix_counts_matches_misses_and_false_alarms() -> None:
    from e2ekit.det.metrics import box_confusion_matrix

    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)]
    gt_labels = [np.array([0, 1, 1])]
    det_boxes = [np.array([[0, 0, 10, 11], [21, 20, 30, 30], [80, 80, 90, 90], [0, 0, 9, 9]])]
    det_scores = [np.array([0.9, 0.8, 0.7, 0.1])]  # the last is under 0.25: not counted
    det_labels = [np.array([0, 0, 1, 0])]
    mat = box_confusion_matrix(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, 2)
    want = np.array(
        [
            [1, 0, 0],  # class 0: found as 0
            [1, 0, 1],  # class 1: once called 0, once missed
            [0, 1, 0],  # background: a false class-1 box
        ]
    )
    np.testing.assert_array_equal(mat, want)


@pytest.mark.parametrize("verb", ["eval", "export"])
def test_a_missing_weights_flag_fails_before_any_data_is_read(cli, tmp_path, verb) -> None:
    """The data point nowhere: the only error possible before reading it is the flag's."""
    code, _, err = cli(
        "det", verb, "-c", "quick",
        "-o", f"data.train_ann={tmp_path}/nope/train.json",
        "-o", f"data.val_ann={tmp_path}/nope/val.json",
    )  # fmt: skip
    assert code == 1 and err.strip() == (
        "error: --weights is required: a checkpoint (best.pt/last.pt) or a run folder"
    )
    assert not list(tmp_path.iterdir())  # nothing written
