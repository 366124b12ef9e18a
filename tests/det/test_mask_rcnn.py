"""Mask R-CNN: builds from the shipped configs, ``loss_mask`` trains, eval returns masks,
segm AP through the CLI, predict draws masks and writes RLE, export is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from e2ekit.core.config import load_config
from e2ekit.core.errors import ConfigError, DataError
from e2ekit.det.config import DetConfig
from e2ekit.det.data.synthetic import _render
from e2ekit.det.export import det_export_spec
from e2ekit.det.metrics import coco_evaluate, encode_masks
from e2ekit.det.models.faster_rcnn import FasterRCNN
from e2ekit.det.models.mask_rcnn import MaskRCNN, mask_rcnn_tiny
from e2ekit.det.registry import MODELS
from e2ekit.det.runner import DetRunner, draw, masks_in_image
from e2ekit.det.task import DetTask, model_needs_masks

from ..conftest import ROOT
from .rcnn_helpers import one_thread  # noqa: F401  (autouse)

CONFIGS = ROOT / "configs" / "det"
LOSSES = {"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box", "loss_mask"}
NUM_CLASSES = 3


def _tiny(**kwargs) -> MaskRCNN:
    torch.manual_seed(0)
    return mask_rcnn_tiny(num_classes=NUM_CLASSES, **kwargs)


def _shapes(n: int, size: int = 96) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` built-in shape images (normalised) and targets with their visible masks."""
    images, targets = [], []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        image, boxes, labels, top = _render(rng, (size, size), NUM_CLASSES, i % 3, 3, 0.2, 0.6)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5)
        masks = np.stack([top == j for j in range(len(boxes))]).astype(np.uint8)
        targets.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels),
                "masks": torch.from_numpy(masks),
            }
        )
    return torch.stack(images), targets


def _confident(det: MaskRCNN) -> MaskRCNN:
    """Every proposal is class 0 with score ~1 and every mask pixel is on: a deterministic
    detector whose masks fill their boxes."""
    with torch.no_grad():
        cls = det.roi_heads.box_predictor.cls_score
        cls.weight.zero_()
        cls.bias.copy_(torch.tensor([-10.0, 10.0] + [-10.0] * (NUM_CLASSES - 1)))
        logits = det.roi_heads.mask_predictor.mask_fcn_logits
        logits.weight.zero_()
        logits.bias.fill_(10.0)
    return det.eval()


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("name", ["mask_rcnn_tiny", "mask_rcnn_r50_fpn"])
def test_builds_from_its_config(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", DetConfig, [])
    task = DetTask(cfg)
    assert task.needs_masks
    det = task.build_detector()
    assert isinstance(det, MaskRCNN) and isinstance(det, FasterRCNN) and det.needs_masks
    assert MODELS.get(name) is not None and det.num_classes == 4
    heads = det.roi_heads
    assert heads.has_mask() and heads.mask_roi_pool.output_size == (14, 14)
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 4 + 1  # + background


def test_box_models_do_not_need_masks() -> None:
    assert not model_needs_masks("faster_rcnn_tiny") and not model_needs_masks("retinanet_tiny")
    assert model_needs_masks("mask_rcnn_tiny") and not model_needs_masks("no_such_model")


def test_unknown_head_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.rpn_nms_treshold"):
        _tiny(rpn_nms_treshold=0.5)
    assert _tiny(rpn_nms_thresh=0.6).rpn.nms_thresh == pytest.approx(0.6)


def test_training_step_has_loss_mask_with_gradients() -> None:
    det = _tiny().train()
    images, targets = _shapes(2)
    targets[1] = {  # an image without objects trains too
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 96, 96), dtype=torch.uint8),
    }
    losses = det(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0.1  # untrained: about log(2) per pixel
    losses["loss_mask"].backward()
    grad = det.roi_heads.mask_head[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_targets_without_masks_are_refused() -> None:
    images, targets = _shapes(1)
    del targets[0]["masks"]
    with pytest.raises(DataError, match="no 'masks'"):
        _tiny().train()(images, targets)


def test_losses_fall_on_a_few_images() -> None:
    det = _tiny().train()
    images, targets = _shapes(2, size=80)
    opt = torch.optim.AdamW(det.parameters(), lr=2e-3)
    first, last = None, None
    for _ in range(30):
        losses = det(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        last = {k: float(v.detach()) for k, v in losses.items()}
        first = first or last
    assert last["loss_mask"] < 0.8 * first["loss_mask"], (first, last)
    assert sum(last.values()) < 0.6 * sum(first.values()), (first, last)


def test_eval_contract_with_masks() -> None:
    det = _confident(_tiny(max_detections=5))
    images = _shapes(2)[0]
    with torch.no_grad():
        out = det(images)
        boxes, scores = det.forward_raw(images)
        plain = det.postprocess(boxes, scores)  # forward_raw is the box part of eval
    assert len(out) == 2
    for o, p in zip(out, plain, strict=True):
        m = len(o["boxes"])
        assert m == 5 and set(o) == {"boxes", "scores", "labels", "masks"}
        assert torch.equal(o["boxes"], p["boxes"]) and torch.equal(o["labels"], p["labels"])
        assert o["masks"].shape == (m, 1, 96, 96) and o["masks"].dtype == torch.float32
        assert o["masks"].min() >= 0 and o["masks"].max() <= 1
        # each mask (bias 10: all on) covers its box and nothing far outside it
        x1, y1, x2, y2 = o["boxes"][0].round().int().tolist()
        on = o["masks"][0, 0] > 0.5
        assert on[(y1 + y2) // 2, (x1 + x2) // 2]
        outside = on.clone()
        outside[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = False
        assert not outside.any()


def test_eval_without_detections_has_empty_masks() -> None:
    det = _tiny(score_thresh=0.999).eval()
    with torch.no_grad():
        out = det(torch.zeros(1, 3, 64, 64))
    assert out[0]["masks"].shape == (0, 1, 64, 64)


# --------------------------------------------------------------------------- metrics / runner


def test_masks_in_image_maps_input_pixels_back() -> None:
    probs = torch.zeros(1, 1, 64, 64)
    probs[0, 0, 16:48, 8:24] = 1.0  # input is the image scaled by (0.5, 0.25), padded to 64
    back = masks_in_image(probs, (0.5, 0.25), (100, 200))
    assert back.shape == (1, 100, 200) and back.dtype == np.uint8
    ys, xs = np.nonzero(back[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (32, 95, 32, 95)


def test_segm_ap_of_exact_masks_is_one_and_of_shifted_is_lower() -> None:
    mask = np.zeros((1, 40, 50), np.uint8)
    mask[0, 5:25, 10:30] = 1
    rle = encode_masks(mask)[0]
    gt = {
        "images": [{"id": 1, "width": 50, "height": 40}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20], "area": 400,
             "iscrowd": 0, "segmentation": rle},
        ],
    }  # fmt: skip
    det = {"image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20], "score": 0.9}
    exact = coco_evaluate(gt, [{**det, "segmentation": rle}], iou_type="segm")
    assert exact["mAP"] == pytest.approx(1.0)
    shifted = encode_masks(np.roll(mask, 6, axis=2))[0]  # same box key, other pixels
    lower = coco_evaluate(gt, [{**det, "segmentation": shifted}], iou_type="segm")
    assert lower["AP50"] == pytest.approx(1.0) and lower["AP75"] == 0.0
    assert coco_evaluate(gt, [det])["AP75"] == pytest.approx(1.0)  # bbox: unchanged
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(gt, [det], iou_type="segm")


def test_checkpoint_runner_draws_masks_and_writes_rle(tmp_path: Path) -> None:
    from e2ekit.core.verbs import ModulePredictor

    cfg = load_config(CONFIGS / "mask_rcnn_tiny.yaml", DetConfig, ["export.input_size=96"])
    det = _confident(_tiny(max_detections=3))
    spec = det_export_spec(det, cfg, ["a", "b", "c"])
    runner = DetRunner(ModulePredictor(spec, torch.device("cpu")))
    image = torch.full((3, 120, 90), 100, dtype=torch.uint8)
    found = runner.detect(image)
    assert found["masks"].shape == (3, 120, 90) and found["masks"].dtype == np.uint8
    items = runner.as_json(found)
    assert len(items) == 3 and all(set(i["mask"]) == {"size", "counts"} for i in items)
    decoded = mask_utils.decode(items[0]["mask"])
    assert decoded.shape == (120, 90) and np.array_equal(decoded, found["masks"][0])
    drawn = draw(image, found["boxes"], ["x"] * 3, found["masks"])
    plain = draw(image, found["boxes"], ["x"] * 3)
    inside = torch.from_numpy(found["masks"].any(0))
    assert inside.any() and (drawn != plain)[:, inside].any()
    assert torch.equal(drawn[:, ~inside], plain[:, ~inside])  # only mask pixels change


def test_onnx_export_returns_the_checkpoint_masks(tmp_path: Path) -> None:
    """Boxes, scores and box-local masks within 1e-4 of PyTorch in onnxruntime, and the
    runner pastes the same binary masks from the export as from the checkpoint."""
    from e2ekit.core.infer import Predictor
    from e2ekit.core.verbs import ModulePredictor

    cfg = load_config(CONFIGS / "mask_rcnn_tiny.yaml", DetConfig, ["export.input_size=96"])
    det = _tiny(max_detections=5)
    with torch.no_grad():  # a few confident boxes; the mask head keeps its random weights
        cls = det.roi_heads.box_predictor.cls_score
        cls.weight.mul_(0.1)
        cls.bias.copy_(torch.tensor([-3.0, 3.0, 0.0, -1.0]))
    images = [torch.randint(0, 255, (3, 120, 90), dtype=torch.uint8) for _ in range(2)]
    spec = det_export_spec(det.eval(), cfg, ["a", "b", "c"], images)
    report = spec.export(tmp_path / "export")
    onnx = report["onnx"]
    assert onnx["passed"] and onnx["per_output"]["masks"]["max_abs_diff"] < 1e-4
    assert onnx["per_output"]["masks"]["shapes"][0] == [1, 5, 28, 28]
    exported = DetRunner(Predictor(tmp_path / "export"))
    deploy = exported.deploy
    assert [o["name"] for o in deploy["outputs"]][-1] == "masks" and "box" in deploy["mask_format"]
    checkpoint = DetRunner(ModulePredictor(spec, torch.device("cpu")))
    rebuilt = DetRunner(Predictor(tmp_path / "export", backend="torch"))  # weights.pt
    for image in images:
        a, b = exported.detect(image), checkpoint.detect(image)
        np.testing.assert_array_equal(rebuilt.detect(image)["masks"], b["masks"])
        assert a["masks"].shape == b["masks"].shape == (5, 120, 90)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
        agree = (a["masks"] == b["masks"]).mean()
        assert agree > 0.999 and 0 < a["masks"].sum() < a["masks"].size
        inside = np.zeros_like(a["masks"])  # pasted into its own box, nowhere else
        for i, (x0, y0, x1, y1) in enumerate(a["boxes"]):
            inside[i, int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1] = 1
        assert not (a["masks"] & ~inside.astype(bool)).any()


def test_voc_data_is_refused_for_a_mask_model(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "mask_rcnn_tiny.yaml",
        DetConfig,
        [
            "data.format=voc",
            f"data.root={tmp_path}",
            "data.train_list=train.txt",
            "data.label_list=labels.txt",
            "data.train_ann=null",
            "data.val_ann=null",
        ],
    )
    with pytest.raises(ConfigError, match="VOC data"):
        DetTask(cfg).det_dataset("train")


# --------------------------------------------------------------------------- CLI


def test_cli_trains_evaluates_segm_predicts_and_exports_masks(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        "det", "train", "-c", CONFIGS / "mask_rcnn_tiny.yaml",
        "-o", "train.max_steps=4", "-o", "train.batch_size=4", "-o", "train.eval_interval=4",
        "-o", "train.tensorboard=false",
        "-o", "data.builtin={num_train: 8, num_val: 4, size: 128}",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mAP", "AP50", "segm_mAP", "segm_AP50", "segm_AP75"} <= set(metrics)
    assert 0.0 <= metrics["segm_mAP"] <= metrics["segm_AP50"] + 1e-9 <= 1.0 + 1e-9

    task = DetTask(load_config(out / "config.yaml", DetConfig, []))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{r.file}\n" for r in task.det_dataset("val").records[:2]))
    code, _, err = cli(
        "det", "predict", "--weights", out, "--input", listing, "--out", tmp_path / "pred",
        "--draw-threshold", "0.0",
    )  # fmt: skip
    assert code == 0, err
    rows = [
        json.loads(x) for x in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and len(list((tmp_path / "pred").glob("*.png"))) == 2
    for item in (i for r in rows for i in r["detections"]):
        assert set(item["mask"]) == {"size", "counts"} and item["mask"]["size"] == [128, 128]

    code, _, err = cli("det", "export", "--weights", out, "--out", tmp_path / "export")
    assert code == 0, err
    code, _, err = cli(
        "det", "predict", "--model", tmp_path / "export", "--input", listing,
        "--out", tmp_path / "pred_onnx", "--draw-threshold", "0.0",
    )  # fmt: skip
    assert code == 0, err
    onnx_rows = (tmp_path / "pred_onnx" / "predictions.jsonl").read_text().splitlines()
    for row, ref in zip(map(json.loads, onnx_rows), rows, strict=True):
        assert len(row["detections"]) == len(ref["detections"])
        for item in row["detections"]:
            assert item["mask"]["size"] == [128, 128]
