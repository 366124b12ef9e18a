"""Convert labelme and VOC annotations to one COCO file.

COCO is the one format training and evaluation need to be fast and exact on
(pycocotools reads it), so other formats are converted once rather than
supported everywhere. Both converters are deterministic (ids 1, 2, ... in sorted
file / list order, so re-running gives identical bytes and diffs stay readable)
and write atomically (a temp file renamed into place), so an interrupted
conversion never leaves a truncated file behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.det.data._io import atomic_write_json, image_size
from e2ekit.det.data.coco import load_json
from e2ekit.det.data.records import DetDataset, DetRecord
from e2ekit.det.data.voc import read_voc

__all__ = ["labelme_to_coco", "voc_to_coco"]

log = logging.getLogger("e2ekit")

# labelme shape types that describe an area (others: point, line, linestrip, mask)
_AREA_SHAPES = ("rectangle", "polygon", "circle")


def _labelme_files(
    sources: str | Path | Sequence[str | Path], out: Path
) -> tuple[list[Path], Path]:
    """(the labelme json files in sorted order, the folder file names are relative to)."""
    if isinstance(sources, (str, Path)):
        src = Path(sources).expanduser()
        if src.is_dir():
            files = sorted(
                p for p in src.rglob("*.json") if p.resolve() != out.resolve()
            )  # the output may live in the same folder
            if not files:
                raise DataError(f"no labelme .json files under {src}")
            return files, src
        sources = [src]
    files = sorted(Path(s).expanduser() for s in sources)
    if not files:
        raise DataError("labelme_to_coco: no input files given")
    for f in files:
        if not f.is_file():
            raise DataError(f"labelme file not found: {f}")
    common = Path(os.path.commonpath([str(f.parent.absolute()) for f in files]))
    return files, common


def _shape_box(shape: dict[str, Any], where: str) -> list[float] | None:
    """The bounding box of a labelme shape, or None for a shape without area."""
    kind = shape.get("shape_type") or "polygon"  # labelme omits it for polygons in old files
    if kind not in _AREA_SHAPES:
        return None
    pts = shape.get("points")
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'points' must be a list of [x, y] pairs, got {pts!r}") from None
    need = 2 if kind in ("rectangle", "circle") else 3
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < need:
        raise DataError(f"{where}: a {kind} needs at least {need} [x, y] points, got {pts!r}")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: 'points' has a non-finite value")
    if kind == "circle":  # labelme: centre, then a point on the circle
        (cx, cy), (px, py) = arr[0], arr[1]
        r = float(np.hypot(px - cx, py - cy))
        return [cx - r, cy - r, cx + r, cy + r]
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def labelme_to_coco(
    sources: str | Path | Sequence[str | Path],
    out_file: str | Path,
    class_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
) -> Path:
    """labelme json files (a folder, searched recursively, or a list) -> one COCO file.

    Rectangles and polygons (and circles) become their bounding boxes; points and
    lines have no area and are skipped with a warning. The image size comes from
    ``imageWidth``/``imageHeight`` (else the image header). ``class_names`` fixes the
    classes and their order (category ids 1..K); without it the classes are the
    sorted set of labels found. ``file_name`` is the image path relative to
    ``image_root`` (default: the folder given, or the common folder of the files),
    which is then the ``image_dir`` to read the COCO file with. Returns the path
    written.
    """
    out = Path(out_file).expanduser()
    files, default_root = _labelme_files(sources, out)
    root = Path(image_root).expanduser() if image_root is not None else default_root
    entries: list[tuple[Path, int, int, list[tuple[list[float], str, int]]]] = []
    skipped: dict[str, int] = {}
    for f in files:
        data = load_json(f)
        if not isinstance(data, dict):
            raise DataError(f"{f}: expected a labelme JSON object, got {type(data).__name__}")
        for key in ("shapes", "imagePath"):
            if key not in data:
                raise DataError(f"{f}: '{key}' missing; is this a labelme file?")
        shapes = data["shapes"]
        if not isinstance(shapes, list):
            raise DataError(f"{f}: 'shapes' must be a list, got {type(shapes).__name__}")
        image = Path(os.path.normpath(f.parent.absolute() / str(data["imagePath"])))
        w, h = data.get("imageWidth"), data.get("imageHeight")
        if not all(type(v) is int and 0 < v < 2**31 for v in (w, h)):  # else: the header
            w, h = image_size(image, f"{f} imageWidth/imageHeight")
        boxes: list[tuple[list[float], str, int]] = []
        for j, shape in enumerate(shapes):
            where = f"{f} shapes[{j}]"
            if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
                raise DataError(f"{where}: a shape needs 'label' and 'points'")
            box = _shape_box(shape, where)
            if box is None:
                kind = str(shape.get("shape_type"))
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            boxes.append((box, str(shape["label"]), j))
        entries.append((image, int(w), int(h), boxes))
    found = sorted({label for *_, boxes in entries for _, label, _ in boxes})
    names = list(class_names) if class_names is not None else found
    index = {n: k for k, n in enumerate(names)}
    records = []
    for image_id, ((image, w, h, boxes), f) in enumerate(zip(entries, files, strict=True), 1):
        for _, label, j in boxes:
            if label not in index:
                raise DataError(
                    f"{f} shapes[{j}]: label '{label}' is not in class_names "
                    f"({', '.join(names)}){did_you_mean(label, names)}"
                )
        records.append(
            DetRecord(
                image_id=image_id,
                file=image,
                width=w,
                height=h,
                boxes=np.array([b for b, _, _ in boxes], np.float32).reshape(-1, 4),
                labels=np.array([index[lb] for _, lb, _ in boxes], np.int64),
                iscrowd=np.zeros(len(boxes), bool),
                ref_ids=np.array([j for *_, j in boxes], np.int64),
                ref_kind="shapes",
                source=str(f),
            )
        )
    if skipped:
        log.warning(
            "labelme_to_coco: skipped shapes without area: %s",
            ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
        )
    ds = DetDataset(records=records, class_names=names)
    return atomic_write_json(ds.to_coco(image_root=root.absolute()), out)


def voc_to_coco(
    root: str | Path,
    list_file: str | Path,
    label_list: str | Path | Sequence[str],
    out_file: str | Path,
) -> Path:
    """A VOC list (see :func:`read_voc`) -> one COCO file; read it back with ``image_dir=root``.

    Boxes are written as read (no validation, no shift: see ``voc.py`` for the
    coordinate convention), so conversion never hides a problem that ``validate``
    would report; category ids are 1..K in label-list order; the difficult flag
    is kept as ``difficult: 1``. Returns the path written.
    """
    root_path = Path(root).expanduser()
    ds = read_voc(root_path, list_file, label_list)
    return atomic_write_json(ds.to_coco(image_root=root_path), out_file)
