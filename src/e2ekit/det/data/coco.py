"""COCO-format detection annotations -> :class:`DetDataset`.

The reader checks the file's structure (valid JSON, the three lists, the keys
each entry needs) and fails with one DataError naming the file and the entry,
e.g. ``train.json annotations[12]: 'bbox' missing``. Problems of *content* that a
user may prefer to drop rather than fix (a box outside its image, a zero-size box,
a category id the ``categories`` list lacks) are kept in the dataset for
:func:`e2ekit.det.data.validate.validate` to count and report all at once.

Category ids need not be contiguous (COCO's own run 1..90 with gaps): classes are
the categories sorted by id, so class ``k`` is the k-th smallest id, and
``category_ids`` maps back for writing detections. Images without annotations
are kept (they are negatives for training and count for evaluation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.core.textio import loads_json, read_utf8
from e2ekit.det.data._io import image_size
from e2ekit.det.data.masks import compact_segmentation, has_segmentation
from e2ekit.det.data.records import DetDataset, DetRecord

__all__ = ["load_json", "read_coco"]


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error names the file and line."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    text = read_utf8(path, DataError)
    try:
        return loads_json(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


_INT64 = (-(2**63), 2**63 - 1)


def _int(value: Any, where: str, key: str) -> int:
    """An integer field (bools and fractional numbers rejected: they are always a bug).

    Ids and sizes are stored as int64, so a larger number is refused here rather than
    overflowing (or wrapping around) in numpy.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: '{key}' must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise DataError(f"{where}: '{key}' must be an integer, got {value!r}")
    if not _INT64[0] <= value <= _INT64[1]:
        shown = f"{value:.3g}" if isinstance(value, float) else f"a {len(str(value))}-digit number"
        raise DataError(f"{where}: '{key}' is {shown}, out of the 64-bit integer range")
    return int(value)


def _entry(item: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    for key in required:
        if key not in item:
            have = ", ".join(sorted(item)) or "none"
            raise DataError(f"{where}: '{key}' missing (keys present: {have})")
    return item


def _list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    if key not in data:
        raise DataError(
            f"{path}: no '{key}' list; a COCO annotation file has 'images', 'annotations' "
            f"and 'categories' (keys present: {', '.join(sorted(data)) or 'none'})"
        )
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _bbox(value: Any, where: str) -> list[float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise DataError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {value!r}")
    try:
        box = [float(v) for v in value]
    except OverflowError:  # an integer of hundreds of digits
        box = [math.inf]
    if not all(math.isfinite(v) for v in box):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise DataError(f"{where}: 'bbox' has a non-finite value: {shown}")
    return box


@dataclass
class _Annotations:
    image_ids: np.ndarray  # int64 (N,)
    category_ids: np.ndarray  # int64 (N,)
    bboxes: np.ndarray  # float64 (N, 4) xywh
    iscrowd: np.ndarray  # bool (N,)
    difficult: np.ndarray  # bool (N,)
    segmentations: list[Any] | None  # raw, one per annotation; None when none has one


def _int_column(values: list[Any], key: str, src: str) -> np.ndarray:
    """A list of ids as int64 in one numpy call; the slow per-entry check names a bad one."""
    try:
        arr = np.asarray(values) if values else np.zeros(0, np.int64)
    except (ValueError, TypeError):  # ragged: some id is a list
        arr = np.zeros((0, 0))
    fits = arr.dtype.kind == "i" or (arr.dtype.kind == "u" and arr.max() <= _INT64[1])
    if arr.ndim == 1 and fits:  # uint64 past int64 would wrap around: checked one by one
        return arr.astype(np.int64)
    return np.array(
        [_int(v, f"{src} annotations[{i}]", key) for i, v in enumerate(values)], np.int64
    )


def _annotations(annotations: list[Any], src: str, masks: bool) -> _Annotations:
    """All annotations as columns.

    The common case (a well-formed file) costs a few list appends per annotation
    and one numpy conversion per column, so an 860k-annotation COCO train file
    parses in seconds; only when a column fails to convert does the per-entry
    check run, to name the first offending ``annotations[i]``.
    """
    iids, cids, boxes, crowd, diff, segs = [], [], [], [], [], []
    try:
        for item in annotations:
            iids.append(item["image_id"])
            cids.append(item["category_id"])
            boxes.append(item["bbox"])
            crowd.append(item.get("iscrowd", 0))
            diff.append(item.get("difficult", 0))
            segs.append(item.get("segmentation"))
    except (KeyError, TypeError, AttributeError):
        i = len(boxes)  # 'bbox' is appended last of the required keys: the failing entry
        _entry(annotations[i], f"{src} annotations[{i}]", ("image_id", "category_id", "bbox"))
        raise  # not reached: _entry names the missing key
    bb: np.ndarray | None
    try:
        bb = np.array(boxes, dtype=np.float64) if boxes else np.zeros((0, 4))
        if bb.ndim != 2 or bb.shape[1] != 4 or not np.isfinite(bb).all():
            bb = None
    except (TypeError, ValueError, OverflowError):
        bb = None
    if bb is None:  # find and name the first bad bbox
        bb = np.array(
            [_bbox(v, f"{src} annotations[{i}]") for i, v in enumerate(boxes)], np.float64
        ).reshape(-1, 4)
    return _Annotations(
        image_ids=_int_column(iids, "image_id", src),
        category_ids=_int_column(cids, "category_id", src),
        bboxes=bb,
        iscrowd=np.array([bool(v) for v in crowd], bool),
        difficult=np.array([bool(v) for v in diff], bool),
        segmentations=(
            [compact_segmentation(v) if has_segmentation(v) else None for v in segs]
            if masks and any(has_segmentation(v) for v in segs)
            else None
        ),
    )


def parse_coco(data: Any, path: Path, image_dir: Path, masks: bool = False) -> DetDataset:
    """A parsed COCO dict -> DetDataset (``path`` only names the file in messages)."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', "
                        f"'categories', got {type(data).__name__}")  # fmt: skip
    images = _list(data, "images", path)
    annotations = _list(data, "annotations", path)
    categories = _list(data, "categories", path)
    src = str(path)

    cats: dict[int, str] = {}
    for i, item in enumerate(categories):
        where = f"{src} categories[{i}]"
        cat = _entry(item, where, ("id", "name"))
        cid = _int(cat["id"], where, "id")
        if cid in cats:
            raise DataError(f"{where}: duplicate category id {cid} (also '{cats[cid]}')")
        cats[cid] = str(cat["name"])
    category_ids = sorted(cats)

    image_ids: dict[int, int] = {}  # id -> index in images
    for i, item in enumerate(images):
        where = f"{src} images[{i}]"
        img = _entry(item, where, ("id", "file_name"))
        iid = _int(img["id"], where, "id")
        if iid in image_ids:
            raise DataError(f"{where}: duplicate image id {iid} (also images[{image_ids[iid]}])")
        image_ids[iid] = i

    ann = _annotations(annotations, src, masks)
    sorted_iids = np.array(sorted(image_ids), np.int64)
    pos = np.searchsorted(sorted_iids, ann.image_ids).clip(0, max(0, len(sorted_iids) - 1))
    missing = np.flatnonzero(
        sorted_iids[pos] != ann.image_ids if len(sorted_iids) else np.ones(len(pos), bool)
    )
    if len(missing):
        i = int(missing[0])
        raise DataError(
            f"{src} annotations[{i}]: image_id {int(ann.image_ids[i])} is not in 'images'"
            + (f" (and {len(missing) - 1} more annotations)" if len(missing) > 1 else "")
        )
    cat_arr = np.array(category_ids, np.int64)
    cpos = np.searchsorted(cat_arr, ann.category_ids).clip(0, max(0, len(cat_arr) - 1))
    known = cat_arr[cpos] == ann.category_ids if len(cat_arr) else np.zeros(len(cpos), bool)
    labels = np.where(known, cpos, -1).astype(np.int64)
    bad_ids, bad_counts = np.unique(ann.category_ids[~known], return_counts=True)
    unknown = {f"category_id {c}": int(n) for c, n in zip(bad_ids, bad_counts, strict=True)}
    xywh = ann.bboxes
    with np.errstate(over="ignore", invalid="ignore"):  # huge boxes: inf, for validate
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)

    # group annotations by image (stable: each image keeps its annotations in file order)
    image_pos = np.array([image_ids[int(i)] for i in sorted_iids], np.int64)[pos]
    order = np.argsort(image_pos, kind="stable")
    bounds = np.searchsorted(image_pos[order], np.arange(len(images) + 1))
    segs = ann.segmentations
    records: list[DetRecord] = []
    for i, img in enumerate(images):
        where = f"{src} images[{i}]"
        file = image_dir / str(img["file_name"])
        if img.get("width") and img.get("height"):
            width = _int(img["width"], where, "width")
            height = _int(img["height"], where, "height")
        else:  # hand-made files often omit the size: read it from the image header
            width, height = image_size(file, where)
        idx = order[bounds[i] : bounds[i + 1]]
        records.append(
            DetRecord(
                image_id=int(img["id"]),
                file=file,
                width=width,
                height=height,
                boxes=xyxy[idx],
                labels=labels[idx],
                iscrowd=ann.iscrowd[idx],
                difficult=ann.difficult[idx],
                ref_ids=idx,
                ref_kind="annotations",
                source=src,
                segmentations=None if segs is None else [segs[j] for j in idx],
            )
        )
    return DetDataset(
        records=records,
        class_names=[cats[c] for c in category_ids],
        category_ids=category_ids,
        source=src,
        unknown_categories=unknown,
    )


def read_coco(ann_file: str | Path, image_dir: str | Path, masks: bool = False) -> DetDataset:
    """Read a COCO instances file; image paths are ``image_dir / file_name``.

    Raises DataError for unreadable JSON, a missing list or key, a non-numeric
    bbox or an annotation of an unknown image. Boxes are converted from
    ``[x, y, w, h]`` to ``xyxy``; ``iscrowd`` is kept (crowd boxes are regions the
    evaluator ignores and training usually skips). With ``masks``, each annotation's
    ``segmentation`` (polygons or RLE) is kept as written in ``DetRecord.segmentations``
    when any annotation has one; it is checked by ``validate`` and decoded only when a
    sample asks for masks (:func:`e2ekit.det.data.samples.load_sample`). Without, a
    box-only run neither keeps nor checks them, as before masks existed. Annotations of a
    category id the ``categories`` list lacks get label -1 and are counted in
    ``unknown_categories`` for ``validate`` to report.
    """
    path = Path(ann_file).expanduser()
    return parse_coco(load_json(path), path, Path(image_dir).expanduser(), masks)
