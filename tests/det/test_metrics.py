"""Detection metrics: COCO numbers pinned to pycocotools, VOC mAP checked by hand."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest

from e2ekit.det.metrics import (
    COCO_STAT_NAMES,
    coco_evaluate,
    to_coco_detections,
    voc_ap,
    voc_evaluate,
    write_coco_detections,
)

# --------------------------------------------------------------------------- COCO fixtures


def _box(x: float, y: float, w: float, h: float) -> list[float]:
    return [float(x), float(y), float(w), float(h)]


def _gt() -> dict:
    """4 images, 3 categories with sparse unsorted ids, small/medium/large boxes, one crowd."""
    images = [
        {"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (10, 20, 30, 40)
    ]
    categories = [{"id": 7, "name": "bird"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    raw = [
        (10, 1, _box(50, 50, 200, 150), 0),  # cat large
        (10, 3, _box(300, 200, 60, 50), 0),  # dog medium
        (10, 7, _box(400, 50, 20, 20), 0),  # bird small
        (20, 1, _box(10, 10, 80, 60), 0),  # cat medium
        (20, 1, _box(200, 200, 25, 25), 0),  # cat small
        (20, 3, _box(300, 100, 250, 200), 0),  # dog large
        (20, 3, _box(0, 300, 200, 150), 1),  # dog crowd
        (30, 7, _box(100, 100, 70, 70), 0),  # bird medium
        (30, 7, _box(300, 200, 150, 120), 0),  # bird large
        (40, 3, _box(50, 50, 30, 20), 0),  # dog small
        (40, 1, _box(500, 300, 100, 100), 0),  # cat large, never detected
    ]
    annotations = [
        {
            "id": k + 1,
            "image_id": im,
            "category_id": cat,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": crowd,
            "segmentation": [],
        }
        for k, (im, cat, b, crowd) in enumerate(raw)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _dets() -> list[dict]:
    """Hand-written detections: hits of varying IoU, duplicates, false positives, a miss."""

    def d(im: int, cat: int, b: list[float], s: float) -> dict:
        return {"image_id": im, "category_id": cat, "bbox": b, "score": s}

    return [
        d(10, 1, _box(52, 48, 198, 155), 0.95),  # cat hit, high IoU
        d(10, 1, _box(60, 60, 190, 140), 0.60),  # cat duplicate
        d(10, 3, _box(305, 205, 60, 50), 0.80),  # dog hit, medium IoU
        d(10, 7, _box(402, 52, 20, 20), 0.70),  # small bird hit
        d(10, 3, _box(500, 400, 40, 40), 0.30),  # dog false positive
        d(20, 1, _box(12, 14, 78, 58), 0.90),  # medium cat hit
        d(20, 1, _box(210, 205, 25, 25), 0.40),  # small cat, weak IoU
        d(20, 3, _box(310, 110, 230, 190), 0.85),  # large dog hit
        d(20, 3, _box(20, 320, 100, 80), 0.75),  # inside the crowd box: ignored
        d(20, 7, _box(300, 100, 250, 200), 0.50),  # right box, wrong class
        d(30, 7, _box(95, 105, 75, 70), 0.65),  # medium bird hit
        d(30, 7, _box(330, 220, 150, 120), 0.55),  # large bird, shifted
        d(30, 7, _box(0, 0, 50, 50), 0.92),  # high-score false positive
        d(40, 3, _box(50, 50, 30, 20), 0.99),  # small dog, exact
        d(40, 3, _box(51, 51, 30, 20), 0.20),  # duplicate
    ]


def _pycocotools_stats(gt: dict, dets: list[dict]) -> np.ndarray:
    """The reference: pycocotools called directly, the documented way."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# Computed once with pycocotools 2.0.11 / numpy 2.4; a change here is a semantic change.
GOLDEN = {"mAP": 0.48770627062706273, "AP50": 0.7516501650165016, "AP75": 0.42684268426842686}
GOLDEN_PER_CLASS = {
    "cat": 0.45544554455445546,
    "dog": 0.7663366336633664,
    "bird": 0.2413366336633663,
}


# --------------------------------------------------------------------------- COCO tests


def test_coco_golden_equals_pycocotools_exactly() -> None:
    gt, dets = _gt(), _dets()
    ours = coco_evaluate(gt, dets)
    ref = _pycocotools_stats(gt, dets)
    assert list(ours) == list(COCO_STAT_NAMES)
    assert len(ref) == 12
    for name, value in zip(COCO_STAT_NAMES, ref, strict=True):
        assert type(ours[name]) is float
        assert ours[name] == float(value), name
    for name, value in GOLDEN.items():
        assert ours[name] == pytest.approx(value, rel=1e-12, abs=0), name


def test_coco_is_silent_and_leaves_inputs_untouched(capsys: pytest.CaptureFixture) -> None:
    gt, dets = _gt(), _dets()
    gt0, dets0 = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_evaluate(gt, dets, classwise=True)
    assert capsys.readouterr().out == ""
    assert gt == gt0  # COCOeval writes 'ignore' into gt annotations, loadRes 'area' into dets
    assert dets == dets0


def test_coco_classwise_per_class_ap() -> None:
    gt, dets = _gt(), _dets()
    res = coco_evaluate(gt, dets, classwise=True)
    per_class = res["per_class_ap"]
    assert list(per_class) == ["cat", "dog", "bird"]  # ascending category id: 1, 3, 7
    for name, value in GOLDEN_PER_CLASS.items():
        assert per_class[name] == pytest.approx(value, rel=1e-12, abs=0), name
    assert abs(np.mean(list(per_class.values())) - res["mAP"]) < 1e-12
    renamed = coco_evaluate(gt, dets, classwise=True, class_names=["c", "d", "b"])
    assert list(renamed["per_class_ap"].values()) == list(per_class.values())
    with pytest.raises(ValueError, match="class_names has 2 names"):
        coco_evaluate(gt, dets, classwise=True, class_names=["c", "d"])


def test_coco_classwise_category_without_gt_is_none() -> None:
    gt, dets = _gt(), _dets()
    gt["categories"].append({"id": 99, "name": "fish"})
    res = coco_evaluate(gt, dets, classwise=True)
    assert res["per_class_ap"]["fish"] is None
    assert res["mAP"] == coco_evaluate(_gt(), dets)["mAP"]  # absent class not in the mean


def test_coco_empty_detections_give_zeros() -> None:
    res = coco_evaluate(_gt(), [], classwise=True)
    assert all(res[name] == 0.0 for name in COCO_STAT_NAMES)
    assert res["per_class_ap"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0}


def test_coco_undefined_stats_stay_minus_one_with_or_without_detections() -> None:
    # No small/medium ground truth: pycocotools reports -1 for those ranges.
    gt = _gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] > 96**2]
    empty = coco_evaluate(gt, [])
    some = coco_evaluate(gt, [{"image_id": 10, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}])
    for res in (empty, some):
        assert res["APs"] == res["APm"] == -1.0
        assert res["mAP"] == 0.0


def test_coco_unknown_image_or_category_id_raises() -> None:
    dets = _dets()
    dets[3] = {**dets[3], "image_id": 999}
    dets[5] = {**dets[5], "image_id": 555}
    with pytest.raises(ValueError, match="image_id 999"):
        coco_evaluate(_gt(), dets)
    bad_cat = [{**_dets()[0], "category_id": 2}]
    with pytest.raises(ValueError, match="category_id 2"):
        coco_evaluate(_gt(), bad_cat)


def test_to_coco_detections_and_atomic_write(tmp_path) -> None:
    gt = _gt()
    # Perfect predictions for every non-crowd box, as a model would emit them (xyxy, labels).
    cat_ids = sorted(c["id"] for c in gt["categories"])
    dets: list[dict] = []
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        labels = np.array([cat_ids.index(a["category_id"]) for a in anns])
        dets += to_coco_detections(
            im["id"], xyxy, np.linspace(0.9, 0.5, len(anns)), labels, cat_ids
        )
    res = coco_evaluate(gt, dets)
    # approx: pycocotools divides by tp + fp + eps, so a perfect AP can be 1 - 1e-16.
    for name in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100"):
        assert res[name] == pytest.approx(1.0, abs=1e-12), name

    one = to_coco_detections(7, [[10.123456789, 20.5, 30.25, 40.0]], [0.5], [1], [4, 9])
    # No rounding: w/h are the exact float64 differences.
    bbox = [10.123456789, 20.5, 30.25 - 10.123456789, 19.5]
    assert one == [{"image_id": 7, "category_id": 9, "bbox": bbox, "score": 0.5}]
    assert type(one[0]["image_id"]) is int and type(one[0]["bbox"][0]) is float
    assert to_coco_detections(1, np.zeros((0, 4)), [], [], [1]) == []
    with pytest.raises(ValueError, match="labels must be in"):
        to_coco_detections(1, [[0, 0, 1, 1]], [0.5], [2], [1, 2])

    path = write_coco_detections(tmp_path / "sub" / "dets.json", dets)
    assert json.loads(path.read_text()) == dets
    assert sorted(p.name for p in path.parent.iterdir()) == ["dets.json"]
    with pytest.raises(ValueError):
        write_coco_detections(tmp_path / "nan.json", [{**dets[0], "score": math.nan}])
    assert not any(
        p.name.startswith(".nan.json") or p.name == "nan.json" for p in tmp_path.iterdir()
    )


# --------------------------------------------------------------------------- VOC

# One class, 4 ground-truth boxes. Ranked detections: hit, FP, hit, hit, FP:
#   recall    .25  .25  .50  .75  .75
#   precision 1    1/2  2/3  3/4  3/5
# area: interpolated precision is 1 on (0, .25], 3/4 on (.25, .75], 0 after ->
#       .25 * 1 + .5 * .75 = 0.625
# 11-point: t = 0, .1, .2 -> 1; t = .3 ... .7 -> .75; t = .8 ... 1 -> 0 -> 6.75 / 11
HAND_REC = [0.25, 0.25, 0.5, 0.75, 0.75]
HAND_PREC = [1.0, 0.5, 2 / 3, 0.75, 0.6]
HAND_AREA = 0.625
HAND_11PT = 6.75 / 11


def test_voc_ap_by_hand() -> None:
    assert voc_ap(HAND_REC, HAND_PREC, use_07_metric=False) == pytest.approx(HAND_AREA, abs=1e-12)
    assert voc_ap(HAND_REC, HAND_PREC, use_07_metric=True) == pytest.approx(HAND_11PT, abs=1e-12)
    # Recall exactly 0.3 reaches the 0.3 threshold (np.arange's 0.30000000000000004 would not).
    assert voc_ap([0.1, 0.2, 3 / 10], [1.0, 1.0, 1.0], use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap([], [], use_07_metric=True) == 0.0
    assert voc_ap([1.0], [1.0], use_07_metric=False) == 1.0


def _hand_case() -> tuple[list, ...]:
    """The PR curve above, spread over two images, plus a perfectly detected class 1."""
    gt_boxes = [
        np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 50, 40, 90]], dtype=float),
        np.array([[40, 0, 50, 10], [60, 0, 70, 10]], dtype=float),
    ]
    gt_labels = [np.array([0, 0, 1]), np.array([0, 0])]
    det_boxes = [
        np.array(
            [
                [0, 0, 10, 10],
                [100, 100, 110, 110],
                [20, 0, 30, 10],
                [1, 0, 11, 10],
                [0, 50, 40, 90],
            ],
            dtype=float,
        ),
        np.array([[40, 0, 50, 10]], dtype=float),
    ]
    # rank: .9 hit g0 | .8 FP | .7 hit g1 | .6 hit (image 1) | .5 duplicate of g0 (IoU .82)
    det_scores = [np.array([0.9, 0.8, 0.7, 0.5, 0.3]), np.array([0.6])]
    det_labels = [np.array([0, 0, 0, 0, 1]), np.array([0])]
    return gt_boxes, gt_labels, det_boxes, det_scores, det_labels


@pytest.mark.parametrize(("metric", "expected"), [("area", HAND_AREA), ("11point", HAND_11PT)])
def test_voc_evaluate_by_hand(metric: str, expected: float) -> None:
    gb, gl, db, ds, dl = _hand_case()
    res = voc_evaluate(gb, gl, None, db, ds, dl, num_classes=2, metric=metric)
    assert res["per_class_ap"][0] == pytest.approx(expected, abs=1e-12)
    assert res["per_class_ap"][1] == 1.0
    assert res["mAP"] == pytest.approx((expected + 1.0) / 2, abs=1e-12)


@pytest.mark.parametrize("metric", ["area", "11point"])
def test_voc_perfect_detections(metric: str) -> None:
    rng = np.random.default_rng(0)
    gt_boxes, gt_labels = [], []
    for _ in range(3):
        xy = rng.uniform(0, 200, size=(4, 2))
        gt_boxes.append(np.concatenate([xy, xy + rng.uniform(5, 80, size=(4, 2))], axis=1))
        gt_labels.append(np.array([0, 1, 2, 1]))
    scores = [rng.uniform(0.1, 1, size=4) for _ in range(3)]
    res = voc_evaluate(gt_boxes, gt_labels, None, gt_boxes, scores, gt_labels, 3, metric=metric)
    assert res == {"mAP": 1.0, "per_class_ap": [1.0, 1.0, 1.0]}


def test_voc_difficult_boxes_are_neither_misses_nor_false_positives() -> None:
    gt = [np.array([[0, 0, 10, 10], [50, 50, 60, 60], [80, 0, 90, 10]], dtype=float)]
    labels = [np.array([0, 0, 0])]
    difficult = [np.array([False, True, True])]
    # The difficult match outranks the real hit; the other difficult box is never found.
    dets = [np.array([[50, 50, 60, 60], [0, 0, 10, 10]], dtype=float)]
    scores, det_labels = [np.array([0.9, 0.8])], [np.array([0, 0])]
    for metric in ("area", "11point"):
        res = voc_evaluate(gt, labels, difficult, dets, scores, det_labels, 1, metric=metric)
        assert res["per_class_ap"] == [1.0]
    # Without the difficult flags the same detections are perfect hits but miss a box.
    plain = voc_evaluate(gt, labels, None, dets, scores, det_labels, 1)
    assert plain["per_class_ap"][0] < 1.0


def test_voc_iou_convention_and_threshold() -> None:
    gt = [np.array([[0, 0, 10, 10]], dtype=float)]
    labels = [np.array([0])]
    # IoU exactly 0.5 without +1 (100 / 200): not > 0.5, so a false positive.
    # (The devkit's +1 convention would give 121 / 231 = 0.52 and count it.)
    at_half = voc_evaluate(gt, labels, None, [np.array([[0, 0, 10, 20]])], [[0.9]], [[0]], 1)
    assert at_half["mAP"] == 0.0
    above = voc_evaluate(gt, labels, None, [np.array([[0, 0, 10, 19]])], [[0.9]], [[0]], 1)
    assert above["mAP"] == 1.0


def test_voc_class_without_gt_and_no_detections() -> None:
    gt = [np.array([[0, 0, 10, 10]], dtype=float)]
    res = voc_evaluate(gt, [[0]], None, [np.zeros((0, 4))], [[]], [[]], num_classes=2)
    assert res == {"mAP": 0.0, "per_class_ap": [0.0, None]}
    with pytest.raises(ValueError, match="metric"):
        voc_evaluate(gt, [[0]], None, [np.zeros((0, 4))], [[]], [[]], 2, metric="integral")
    with pytest.raises(ValueError, match="labels must be in"):
        voc_evaluate(gt, [[3]], None, [np.zeros((0, 4))], [[]], [[]], 2)
