"""Detection metrics: COCO box AP through pycocotools, and Pascal VOC mAP in numpy.

COCO numbers come from pycocotools' own ``COCOeval`` rather than a re-implementation, so
they are the numbers papers, detectron2, mmdetection and PaddleDetection report. The wrapper
only adds what pycocotools lacks for use inside a training loop: it prints nothing (its
chatter goes to the ``e2ekit.det`` logger at DEBUG), it does not mutate the caller's dicts,
it accepts an empty detection list (``loadRes`` crashes on one), and it rejects detections
whose image or category id is not in the ground truth (pycocotools asserts on the first and
silently ignores the second, which hides label-mapping bugs behind a low mAP).

Stats that pycocotools cannot define (e.g. ``APs`` when the ground truth has no small box)
are -1, exactly as in ``COCOeval.stats``; empty detections give 0.0 for every defined stat
and the same -1 for undefined ones, so a model that outputs nothing scores like one whose
every box is wrong.

VOC mAP follows the official devkit (``VOCevalDet`` / py-faster-rcnn ``voc_eval``): per
class, detections of all images are ranked by score; each is a true positive if its best
IoU > ``iou_thresh`` is with a not-yet-matched ground-truth box, a false positive otherwise
(duplicates included); a detection whose best match is a ``difficult`` box counts as
neither, and difficult boxes are not in the recall denominator. Two deliberate deviations:

* IoU uses continuous coordinates (area = (x2 - x1) * (y2 - y1)), not the devkit's
  inclusive pixel indices (+1 on widths and heights). This is the convention of COCO,
  torchvision and modern models; for small boxes it gives slightly lower IoU than the
  devkit, so VOC numbers can differ from the official toolkit in the last decimals.
* The 11 recall thresholds are exactly ``k / 10`` (as PaddleDetection), not
  ``np.arange(0, 1.1, 0.1)``, whose 0.30000000000000004 misses a recall of exactly 0.3.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from e2ekit.core.fileio import atomic_write_json

__all__ = [
    "COCO_STAT_NAMES",
    "box_confusion_matrix",
    "coco_evaluate",
    "encode_masks",
    "to_coco_detections",
    "voc_ap",
    "voc_evaluate",
    "write_coco_detections",
]

log = logging.getLogger("e2ekit.det")

# Order of ``COCOeval.stats`` for iouType="bbox" (and "segm").
COCO_STAT_NAMES: tuple[str, ...] = (
    *("mAP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """Array from numpy / lists / torch tensors (any device) without importing torch."""
    if hasattr(x, "detach"):  # torch.Tensor: np.asarray fails on CUDA tensors
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Route pycocotools' prints to the debug log; it has no verbosity switch.

    ``redirect_stdout`` swaps the process-wide ``sys.stdout``, so evaluation must not run
    concurrently with other threads that print (the trainer evaluates on one thread).
    """
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            log.debug("pycocotools:\n%s", text)


# --------------------------------------------------------------------------- COCO


def _check_detections(
    detections: Sequence[dict], img_ids: set, cat_ids: set, iou_type: str = "bbox"
) -> list[dict]:
    """Validated shallow copies (pycocotools writes area/id/segmentation into result dicts).

    For ``segm`` each needs a ``segmentation`` (RLE) and loses its ``bbox``: pycocotools'
    ``loadRes`` takes a result with a box as a box result (box area, box polygon), without
    one it takes the area and box from the mask.
    """
    out: list[dict] = []
    for i, det in enumerate(detections):
        try:
            image_id, category_id = det["image_id"], det["category_id"]
            score = det["score"]
            shape = det["segmentation"] if iou_type == "segm" else det["bbox"]
        except KeyError as exc:
            need = "segmentation" if iou_type == "segm" else "bbox"
            raise ValueError(
                f"detection {i} has no key {exc}; need image_id, category_id, {need}, score"
            ) from exc
        if image_id not in img_ids:
            raise ValueError(
                f"detection {i} has image_id {image_id!r}, which is not an image "
                "of the ground truth"
            )
        if category_id not in cat_ids:
            raise ValueError(
                f"detection {i} has category_id {category_id!r}, which is not a "
                f"ground-truth category (ids: {sorted(cat_ids)})"
            )
        if iou_type == "segm":
            rest = {k: v for k, v in det.items() if k != "bbox"}
            out.append({**rest, "segmentation": shape, "score": float(score)})
            continue
        box = [float(v) for v in _to_numpy(shape, np.float64).reshape(-1)]
        if len(box) != 4:
            raise ValueError(f"detection {i} bbox must be [x, y, w, h], got {shape!r}")
        out.append({**det, "bbox": box, "score": float(score)})
    return out


def _with_segmentation(ann: dict) -> dict:
    """A ground-truth annotation for segm evaluation: one without a segmentation is its
    box as a polygon (as the data side fills a box-only instance's mask)."""
    seg = ann.get("segmentation")
    if seg is not None and not (isinstance(seg, list) and len(seg) == 0):
        return dict(ann)
    x, y, w, h = (float(v) for v in ann["bbox"])
    return {**ann, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def coco_evaluate(
    gt: dict,
    detections: Sequence[dict],
    *,
    classwise: bool = False,
    class_names: Sequence[str] | None = None,
    iou_type: Literal["bbox", "segm"] = "bbox",
    pr_out: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """COCO bbox (or, with ``iou_type="segm"``, mask) AP/AR of ``detections`` against the
    ground-truth dict ``gt``.

    For ``segm`` the detections carry ``segmentation`` (COCO RLE at the image's size)
    instead of ``bbox``, and ground-truth annotations without one count as their box.

    ``gt`` is a COCO instances dict (``images``, ``annotations`` with xywh ``bbox``, ``area``
    and ``iscrowd``, ``categories``); ``detections`` are COCO result dicts ``{image_id,
    category_id, bbox: [x, y, w, h], score}``. Returns the 12 ``COCOeval.stats`` under
    :data:`COCO_STAT_NAMES` (``mAP`` is AP@[.5:.95]) as Python floats, exactly as
    pycocotools computes them. With ``classwise``, ``per_class_ap`` maps each category name
    to its AP@[.5:.95] (area all, 100 detections), computed from ``eval['precision']`` like
    detectron2 / PaddleDetection: the mean of the entries > -1, or None for a category
    without (non-crowd) ground truth. Names come from ``class_names`` (one per category in
    ascending category-id order, i.e. the contiguous label order) or from ``gt``.

    ``pr_out`` (a dict to fill) receives the PR curves at IoU 0.5 (area all, 100
    detections): ``recall`` (101 points) and ``precision`` (101, K), -1 for a category
    without ground truth.

    Raises ValueError for a detection whose image or category id is not in ``gt``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if "images" not in gt or "categories" not in gt:
        raise ValueError("gt must be a COCO dict with 'images' and 'categories'")
    # COCOeval._prepare writes an 'ignore' key into every gt annotation: copy them.
    dataset = {
        "images": list(gt["images"]),
        "categories": copy.deepcopy(gt["categories"]),
        "annotations": [
            _with_segmentation(a) if iou_type == "segm" else dict(a)
            for a in gt.get("annotations", [])
        ],
    }
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    cats = sorted(dataset["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    if class_names is not None and len(class_names) != len(cat_ids):
        raise ValueError(
            f"class_names has {len(class_names)} names but gt has {len(cat_ids)} categories"
        )
    img_ids = {im["id"] for im in dataset["images"]}
    dets = _check_detections(detections, img_ids, set(cat_ids), iou_type)

    with _quiet_stdout():
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes indexes anns[0]; an empty result set evaluates fine otherwise
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(dataset["images"]),
                "categories": copy.deepcopy(dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    result: dict[str, Any] = {
        name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)
    }
    if pr_out is not None and "precision" in evaluator.eval:
        pr_out["recall"] = np.asarray(evaluator.params.recThrs, dtype=np.float64)
        pr_out["precision"] = np.asarray(evaluator.eval["precision"][0, :, :, 0, -1])
    if classwise:
        names = list(class_names) if class_names is not None else [str(c["name"]) for c in cats]
        precision = evaluator.eval["precision"]  # (T iou, R recall, K cat, A area, M maxDets)
        per_class: dict[str, float | None] = {}
        for k, name in enumerate(names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            ap = float(np.mean(p)) if p.size else math.nan
            per_class[name] = None if math.isnan(ap) else ap
        result["per_class_ap"] = per_class
    return result


def to_coco_detections(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int],
) -> list[dict]:
    """COCO result dicts for one image's predictions.

    ``boxes_xyxy`` (N, 4) are absolute x1, y1, x2, y2; ``labels`` (N,) are contiguous class
    indices mapped to dataset ids through ``category_ids[label]`` (COCO ids are sparse).
    Coordinates are not rounded: 2-decimal rounding, common in exporters, shifts AP75.
    Torch tensors on any device are accepted.
    """
    boxes = _to_numpy(boxes_xyxy, np.float64).reshape(-1, 4)
    score_arr = _to_numpy(scores, np.float64).reshape(-1)
    label_arr = _to_numpy(labels, np.int64).reshape(-1)
    if not len(boxes) == len(score_arr) == len(label_arr):
        raise ValueError(
            f"boxes ({len(boxes)}), scores ({len(score_arr)}) and labels "
            f"({len(label_arr)}) must have the same length"
        )
    if label_arr.size and (label_arr.min() < 0 or label_arr.max() >= len(category_ids)):
        raise ValueError(
            f"labels must be in [0, {len(category_ids)}), got "
            f"[{label_arr.min()}, {label_arr.max()}]"
        )
    xywh = boxes.copy()
    xywh[:, 2:] -= boxes[:, :2]
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[lab]), "bbox": box, "score": s}
        for box, s, lab in zip(xywh.tolist(), score_arr.tolist(), label_arr.tolist(), strict=True)
    ]


def encode_masks(masks: Any) -> list[dict[str, Any]]:
    """uint8/bool (M, H, W) binary masks -> COCO compressed RLEs, JSON-ready (``counts`` a
    str), as COCO result files and ``iouType="segm"`` take them."""
    from pycocotools import mask as mask_utils

    arr = _to_numpy(masks, np.uint8)
    if arr.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got shape {arr.shape}")
    out = []
    for m in arr:
        rle = mask_utils.encode(np.asfortranarray(m))
        out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return out


def write_coco_detections(path: str | os.PathLike[str], detections: Sequence[dict]) -> Path:
    """Write detections as a COCO results JSON, atomically (:mod:`e2ekit.core.fileio`).

    A crash mid-write never leaves a truncated file that a later evaluation would load.
    NaN/inf values raise ValueError: they are not JSON and mean the model diverged.
    """
    return atomic_write_json(Path(path), list(detections), indent=None, allow_nan=False)


# --------------------------------------------------------------------------- VOC


def voc_ap(recall: Any, precision: Any, use_07_metric: bool = False) -> float:
    """AP from a PR curve given in detection-rank order (recall non-decreasing).

    ``use_07_metric``: VOC2007 11-point AP, the mean over t in {0, 0.1, ..., 1} of the
    best precision at recall >= t. Otherwise (VOC2010+): the exact area under the
    interpolated curve, where precision at recall r is the best precision at recall >= r.
    An empty curve (no detections) has AP 0.
    """
    rec = _to_numpy(recall, np.float64).reshape(-1)
    prec = _to_numpy(precision, np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall {rec.shape} and precision {prec.shape} differ in length")
    if rec.size == 0:
        return 0.0
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            mask = rec >= k / 10
            ap += float(prec[mask].max()) if mask.any() else 0.0
        return ap / 11
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU in continuous coordinates (no +1), degenerate boxes -> 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(
    dets: np.ndarray, gts: np.ndarray, difficult: np.ndarray, iou_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Devkit greedy matching of one image/class; ``dets`` sorted by descending score."""
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    if len(gts) == 0:
        fp[:] = 1
        return tp, fp
    iou = _iou_xyxy(dets, gts)
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(len(dets)), best]
    matched = np.zeros(len(gts), dtype=bool)
    for k in range(len(dets)):
        j = best[k]
        if best_iou[k] <= iou_thresh:
            fp[k] = 1
        elif difficult[j]:
            continue  # neither a hit nor a false alarm
        elif not matched[j]:
            tp[k] = 1
            matched[j] = True
        else:
            fp[k] = 1  # duplicate of an already matched box
    return tp, fp


def voc_evaluate(
    gt_boxes: Sequence[Any],
    gt_labels: Sequence[Any],
    gt_difficult: Sequence[Any] | None,
    det_boxes: Sequence[Any],
    det_scores: Sequence[Any],
    det_labels: Sequence[Any],
    num_classes: int,
    iou_thresh: float = 0.5,
    metric: Literal["11point", "area"] = "11point",
) -> dict[str, Any]:
    """Pascal VOC mAP over a dataset, one list entry per image.

    Boxes are absolute xyxy (G, 4) / (D, 4); labels are contiguous in [0, num_classes);
    ``gt_difficult`` (G,) bools, or None when no box is difficult. ``metric`` "11point" is
    VOC2007, "area" VOC2010+ (see :func:`voc_ap`). Returns ``{"mAP", "per_class_ap"}``; a
    class without non-difficult ground truth has no defined AP: its entry is None and it
    is left out of the mean (mAP is 0.0 if no class has ground truth, as PaddleDetection).
    """
    if metric not in ("11point", "area"):
        raise ValueError(f"metric must be '11point' or 'area', got {metric!r}")
    n = len(gt_boxes)
    lengths = {len(gt_labels), len(det_boxes), len(det_scores), len(det_labels)}
    if gt_difficult is not None:
        lengths.add(len(gt_difficult))
    if lengths != {n}:
        raise ValueError("gt/det lists must have one entry per image and the same length")

    images = []
    for i in range(n):
        gb = _to_numpy(gt_boxes[i], np.float64).reshape(-1, 4)
        gl = _to_numpy(gt_labels[i], np.int64).reshape(-1)
        gd = (
            np.zeros(len(gb), dtype=bool)
            if gt_difficult is None
            else _to_numpy(gt_difficult[i], bool).reshape(-1)
        )
        db = _to_numpy(det_boxes[i], np.float64).reshape(-1, 4)
        ds = _to_numpy(det_scores[i], np.float64).reshape(-1)
        dl = _to_numpy(det_labels[i], np.int64).reshape(-1)
        if not len(gb) == len(gl) == len(gd) or not len(db) == len(ds) == len(dl):
            raise ValueError(f"image {i}: boxes, labels (and difficult / scores) differ in length")
        for what, lab in (("gt", gl), ("det", dl)):
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(f"image {i}: {what} labels must be in [0, {num_classes})")
        images.append((gb, gl, gd, db, ds, dl))

    per_class: list[float | None] = []
    for c in range(num_classes):
        npos = 0
        scores, tps, fps = [], [], []
        for gb, gl, gd, db, ds, dl in images:
            gmask = gl == c
            npos += int(np.count_nonzero(~gd[gmask]))
            dmask = dl == c
            s = ds[dmask]
            # Stable sort: within-image order equals the global ranking's order below.
            order = np.argsort(-s, kind="mergesort")
            tp, fp = _match_image(db[dmask][order], gb[gmask], gd[gmask], iou_thresh)
            scores.append(s[order])
            tps.append(tp)
            fps.append(fp)
        if npos == 0:
            per_class.append(None)
            continue
        all_scores = np.concatenate(scores)
        order = np.argsort(-all_scores, kind="mergesort")
        tp_cum = np.cumsum(np.concatenate(tps)[order])
        fp_cum = np.cumsum(np.concatenate(fps)[order])
        recall = tp_cum / npos
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        per_class.append(voc_ap(recall, precision, use_07_metric=metric == "11point"))

    valid = [ap for ap in per_class if ap is not None]
    return {"mAP": float(np.mean(valid)) if valid else 0.0, "per_class_ap": per_class}


def box_confusion_matrix(
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    det_labels: Sequence[np.ndarray],
    num_classes: int,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.25,
) -> np.ndarray:
    """Detection confusion matrix ``(K + 1, K + 1)``, rows the true class, columns the
    predicted one, index K the background (ultralytics' layout): per image, detections
    scoring at least ``score_thresh`` are matched to ground-truth boxes by IoU (best pairs
    first, each box at most once, any class); a matched pair counts (true, predicted), an
    unmatched ground truth (true, background), an unmatched detection (background, predicted).
    """
    import torch
    from torchvision.ops import box_iou

    k = int(num_classes)
    mat = np.zeros((k + 1, k + 1), dtype=np.int64)
    for gb, gl, db, ds, dl in zip(
        gt_boxes, gt_labels, det_boxes, det_scores, det_labels, strict=True
    ):
        keep = np.asarray(ds) >= score_thresh
        db, dl = np.asarray(db, np.float32).reshape(-1, 4)[keep], np.asarray(dl)[keep]
        gb, gl = np.asarray(gb, np.float32).reshape(-1, 4), np.asarray(gl)
        gt_used, det_used = np.zeros(len(gb), bool), np.zeros(len(db), bool)
        if len(gb) and len(db):
            iou = box_iou(torch.from_numpy(gb), torch.from_numpy(db)).numpy()
            pairs = np.argwhere(iou >= iou_thresh)
            for g, d in pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]:
                if not gt_used[g] and not det_used[d]:
                    gt_used[g] = det_used[d] = True
                    mat[int(gl[g]), int(dl[d])] += 1
        for g in np.flatnonzero(~gt_used):
            mat[int(gl[g]), k] += 1
        for d in np.flatnonzero(~det_used):
            mat[k, int(dl[d])] += 1
    return mat
