"""Convert labelme, VIA (VGG Image Annotator), CVAT and VOC annotations to one COCO file.

COCO is the one format training and evaluation need to be fast and exact on
(pycocotools reads it), so other formats are converted once rather than
supported everywhere. Both converters are deterministic (ids 1, 2, ... in sorted
file / list order, so re-running gives identical bytes and diffs stay readable)
and write atomically (a temp file renamed into place), so an interrupted
conversion never leaves a truncated file behind.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.core.fileio import atomic_write
from e2ekit.core.textio import read_utf8
from e2ekit.det.data._io import atomic_write_json, image_size
from e2ekit.det.data.coco import load_json
from e2ekit.det.data.records import DetDataset, DetRecord
from e2ekit.det.data.voc import read_voc

__all__ = [
    "cvat_to_coco",
    "labelme_to_coco",
    "split_coco",
    "split_voc_folder",
    "via_to_coco",
    "voc_to_coco",
]

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


#: (box xyxy, label, index of the shape in its file, flat polygon or None)
_Shape = tuple[list[float], str, int, list[float] | None]


def _shape_geometry(
    shape: dict[str, Any], where: str
) -> tuple[list[float], list[float] | None] | None:
    """(bounding box, flat polygon for a polygon shape) of a labelme shape; None without area."""
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
        return [cx - r, cy - r, cx + r, cy + r], None
    polygon = [float(v) for v in arr.reshape(-1)] if kind == "polygon" else None
    return _polygon_box(arr), polygon


def _polygon_box(arr: np.ndarray) -> list[float]:
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


def _dataset(
    entries: list[tuple[Path, int, int, list[_Shape]]],
    sources: list[str],
    class_names: Sequence[str] | None,
    ref_kind: str,
) -> DetDataset:
    """Converted images -> a DetDataset; polygons become segmentations (box-only input keeps
    none, so its COCO file is what it always was). A label outside ``class_names`` fails
    naming the file and shape."""
    found = sorted({label for *_, shapes in entries for _, label, _, _ in shapes})
    names = list(class_names) if class_names is not None else found
    index = {n: k for k, n in enumerate(names)}
    any_polygon = any(poly is not None for *_, shapes in entries for *_, poly in shapes)
    records = []
    for image_id, ((image, w, h, shapes), src) in enumerate(zip(entries, sources, strict=True), 1):
        for _, label, j, _ in shapes:
            if label not in index:
                raise DataError(
                    f"{src} {ref_kind}[{j}]: label '{label}' is not in class_names "
                    f"({', '.join(names)}){did_you_mean(label, names)}"
                )
        records.append(
            DetRecord(
                image_id=image_id,
                file=image,
                width=w,
                height=h,
                boxes=np.array([b for b, *_ in shapes], np.float32).reshape(-1, 4),
                labels=np.array([index[lb] for _, lb, _, _ in shapes], np.int64),
                iscrowd=np.zeros(len(shapes), bool),
                ref_ids=np.array([j for _, _, j, _ in shapes], np.int64),
                ref_kind=ref_kind,
                source=src,
                segmentations=(
                    [None if p is None else [p] for *_, p in shapes] if any_polygon else None
                ),
            )
        )
    return DetDataset(records=records, class_names=names)


def _warn_skipped(who: str, skipped: dict[str, int]) -> None:
    if skipped:
        log.warning(
            "%s: skipped shapes without area: %s",
            who,
            ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
        )


def labelme_to_coco(
    sources: str | Path | Sequence[str | Path],
    out_file: str | Path,
    class_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
) -> Path:
    """labelme json files (a folder, searched recursively, or a list) -> one COCO file.

    Rectangles and polygons (and circles) become their bounding boxes; a polygon also
    becomes the annotation's ``segmentation`` (``[[x1, y1, x2, y2, ...]]``) with ``area`` the
    pixel area of its mask, as in COCO (rectangles and circles stay box-only, ``area``
    ``w * h``); points and lines have no area and are skipped with a warning. The image
    size comes from ``imageWidth``/``imageHeight`` (else the image header). ``class_names``
    fixes the classes and their order (category ids 1..K); without it the classes are the
    sorted set of labels found. ``file_name`` is the image path relative to ``image_root``
    (default: the folder given, or the common folder of the files), which is then the
    ``image_dir`` to read the COCO file with. Returns the path written.
    """
    out = Path(out_file).expanduser()
    files, default_root = _labelme_files(sources, out)
    root = Path(image_root).expanduser() if image_root is not None else default_root
    entries: list[tuple[Path, int, int, list[_Shape]]] = []
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
        found: list[_Shape] = []
        for j, shape in enumerate(shapes):
            where = f"{f} shapes[{j}]"
            if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
                raise DataError(f"{where}: a shape needs 'label' and 'points'")
            geometry = _shape_geometry(shape, where)
            if geometry is None:
                kind = str(shape.get("shape_type"))
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            found.append((geometry[0], str(shape["label"]), j, geometry[1]))
        entries.append((image, int(w), int(h), found))
    _warn_skipped("labelme_to_coco", skipped)
    ds = _dataset(entries, [str(f) for f in files], class_names, "shapes")
    return atomic_write_json(ds.to_coco(image_root=root.absolute(), mask_area=True), out)


# ----------------------------------------------------------------------------- VIA

#: region attribute names tried, in order, when a region has several attributes
_VIA_LABEL_KEYS = ("label", "class", "category", "name", "type")


def _via_images(data: Any, path: Path) -> list[dict[str, Any]]:
    """The per-image entries of a VIA 2 project (``_via_img_metadata``) or annotation export
    (``{key: {filename, regions}}``), sorted by file name for deterministic ids."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a VIA JSON object, got {type(data).__name__}")
    items = []
    for key, item in data.items():
        if not isinstance(item, dict) or "filename" not in item or "regions" not in item:
            raise DataError(
                f"{path} [{key!r}]: a VIA image entry needs 'filename' and 'regions'; export "
                "the project from VIA with Annotation > Export Annotations (as json)"
            )
        items.append(item)
    return sorted(items, key=lambda it: str(it["filename"]))


def _via_label(attrs: Any, where: str, attribute: str | None) -> str:
    """A region's class: ``attribute`` of its region_attributes, or its only attribute (or
    one of ``label``/``class``/... ); a checkbox attribute must have one box ticked."""
    if not isinstance(attrs, dict) or not attrs:
        raise DataError(f"{where}: no region_attributes; give each region a class attribute")
    key = attribute
    if key is None:
        key = next((k for k in _VIA_LABEL_KEYS if k in attrs), None) if len(attrs) > 1 else None
        key = key if key is not None else (next(iter(attrs)) if len(attrs) == 1 else None)
    if key is None or key not in attrs:
        raise DataError(
            f"{where}: cannot tell the class attribute among {sorted(attrs)}; name it "
            f"(via_to_coco(attribute=...)) or call it one of {', '.join(_VIA_LABEL_KEYS)}"
        )
    value = attrs[key]
    if isinstance(value, dict):  # checkbox / multi-select: {"cat": true, "dog": false}
        ticked = [str(k) for k, v in value.items() if v]
        if len(ticked) != 1:
            raise DataError(f"{where}: attribute '{key}' must select one class, got {ticked}")
        value = ticked[0]
    label = str(value).strip()
    if not label:
        raise DataError(f"{where}: attribute '{key}' is empty; give the region a class")
    return label


def _via_numbers(shape: dict[str, Any], keys: tuple[str, ...], where: str) -> list[float]:
    values = [shape.get(k) for k in keys]
    if not all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v) for v in values
    ):
        raise DataError(f"{where}: a {shape.get('name')} needs numbers {', '.join(keys)}")
    return [float(v) for v in values]  # type: ignore[arg-type]


def _via_geometry(shape: Any, where: str) -> tuple[list[float], list[float] | None] | None:
    """(box, flat polygon) of a VIA shape_attributes; None for a shape without area."""
    if not isinstance(shape, dict):
        raise DataError(f"{where}: 'shape_attributes' must be an object")
    name = shape.get("name")
    if name == "rect":
        x, y, w, h = _via_numbers(shape, ("x", "y", "width", "height"), where)
        return [x, y, x + w, y + h], None
    if name == "circle":
        cx, cy, r = _via_numbers(shape, ("cx", "cy", "r"), where)
        return [cx - r, cy - r, cx + r, cy + r], None
    if name == "ellipse":
        cx, cy, rx, ry = _via_numbers(shape, ("cx", "cy", "rx", "ry"), where)
        return [cx - rx, cy - ry, cx + rx, cy + ry], None
    if name != "polygon":
        return None
    xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
    try:
        arr = np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], axis=1)
    except (TypeError, ValueError):
        arr = np.zeros((0, 2))
    if arr.ndim != 2 or len(arr) < 3 or not np.isfinite(arr).all():
        raise DataError(
            f"{where}: a polygon needs all_points_x and all_points_y of the same length, "
            f">= 3 points each, got {xs!r} and {ys!r}"
        )
    return _polygon_box(arr), [float(v) for v in arr.reshape(-1)]


def via_to_coco(
    via_file: str | Path,
    out_file: str | Path,
    image_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    attribute: str | None = None,
) -> Path:
    """A VGG Image Annotator (VIA 2) json -> one COCO file; read it back with ``image_dir``.

    Polygons become boxes plus ``segmentation`` polygons (``area`` the mask's pixel area);
    rectangles, circles and ellipses become boxes; points and polylines have no area and
    are skipped with a warning. The class is the region attribute ``attribute`` (default:
    the region's only attribute, else one named label/class/category/name/type). Images
    (their sizes come from the headers, VIA stores none) are ``image_dir / filename``,
    ``image_dir`` defaulting to the json's folder. Ids are 1, 2, ... in file-name order.
    Returns the path written.
    """
    path = Path(via_file).expanduser()
    root = Path(image_dir).expanduser() if image_dir is not None else path.parent
    entries: list[tuple[Path, int, int, list[_Shape]]] = []
    sources: list[str] = []
    skipped: dict[str, int] = {}
    for item in _via_images(load_json(path), path):
        name = str(item["filename"])
        src = f"{path} {name}"
        regions = item["regions"]
        if isinstance(regions, dict):  # VIA 1: {"0": region, "1": region}
            regions = [regions[k] for k in sorted(regions, key=lambda k: int(k))]
        if not isinstance(regions, list):
            raise DataError(f"{src}: 'regions' must be a list, got {type(regions).__name__}")
        image = Path(os.path.normpath(root.absolute() / name))
        w, h = image_size(image, src)
        found: list[_Shape] = []
        for j, region in enumerate(regions):
            where = f"{src} regions[{j}]"
            if not isinstance(region, dict):
                raise DataError(f"{where}: a region must be an object")
            geometry = _via_geometry(region.get("shape_attributes"), where)
            if geometry is None:
                kind = str((region.get("shape_attributes") or {}).get("name"))
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            label = _via_label(region.get("region_attributes"), where, attribute)
            found.append((geometry[0], label, j, geometry[1]))
        entries.append((image, w, h, found))
        sources.append(src)
    if not entries:
        raise DataError(f"{path}: no images in this VIA file")
    _warn_skipped("via_to_coco", skipped)
    ds = _dataset(entries, sources, class_names, "regions")
    return atomic_write_json(ds.to_coco(image_root=root.absolute(), mask_area=True), out_file)


# ----------------------------------------------------------------------------- CVAT


def _cvat_numbers(node: ET.Element, keys: tuple[str, ...], where: str) -> list[float]:
    try:
        values = [float(node.get(k, "nan")) for k in keys]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{where}: a <{node.tag}> needs numbers {', '.join(keys)}")
    return values


def _cvat_geometry(node: ET.Element, where: str) -> tuple[list[float], list[float] | None] | None:
    """(box, flat polygon) of a CVAT shape; None for one without area. A rotated box becomes
    the polygon of its corners; an ellipse and a mask their bounding boxes."""
    kind = node.tag
    if kind == "box":
        x1, y1, x2, y2 = _cvat_numbers(node, ("xtl", "ytl", "xbr", "ybr"), where)
        angle = math.radians(float(node.get("rotation") or 0.0))
        if not angle:
            return [x1, y1, x2, y2], None
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        c, s = math.cos(angle), math.sin(angle)
        corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        arr = np.array([(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
                        for x, y in corners])  # fmt: skip
        return _polygon_box(arr), [float(v) for v in arr.reshape(-1)]
    if kind == "polygon":
        text = node.get("points", "")
        try:
            arr = np.array([p.split(",") for p in text.split(";") if p.strip()], np.float64)
        except ValueError:
            arr = np.zeros((0, 2))
        if arr.ndim != 2 or arr.shape[1:] != (2,) or len(arr) < 3 or not np.isfinite(arr).all():
            raise DataError(
                f"{where}: a polygon needs at least 3 'x,y' points separated by ';', got "
                f"{text!r}; fix or delete it in CVAT"
            )
        return _polygon_box(arr), [float(v) for v in arr.reshape(-1)]
    if kind == "ellipse":
        cx, cy, rx, ry = _cvat_numbers(node, ("cx", "cy", "rx", "ry"), where)
        return [cx - rx, cy - ry, cx + rx, cy + ry], None
    if kind == "mask":
        left, top, w, h = _cvat_numbers(node, ("left", "top", "width", "height"), where)
        return [left, top, left + w, top + h], None
    if kind in ("points", "polyline", "skeleton", "tag"):
        return None
    raise DataError(
        f"{where}: unknown shape <{kind}>; cvat_to_coco reads box, polygon, ellipse and mask"
    )


def cvat_to_coco(
    xml_file: str | Path,
    out_file: str | Path,
    image_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A "CVAT for images 1.1" XML -> one COCO file; read it back with ``image_dir``.

    Boxes become boxes; polygons become boxes plus ``segmentation`` polygons (``area`` the
    mask's pixel area), so Mask R-CNN trains on them; a rotated box becomes the polygon of
    its corners; ellipses and masks keep their bounding boxes; points and polylines have no
    area and are skipped with a warning. Image sizes come from the XML. The classes are
    ``class_names``, else the labels the XML's meta lists, in its order, else the sorted
    labels found. ``image_dir`` defaults to ``images/`` beside the XML (CVAT's export
    layout) when it exists, else the XML's folder. Returns the path written.
    """
    path = Path(xml_file).expanduser()
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        root_node = ET.fromstring(read_utf8(path, DataError))
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML: {exc}") from None
    if root_node.tag != "annotations":
        raise DataError(
            f"{path}: expected <annotations> (CVAT for images 1.1), got <{root_node.tag}>"
        )
    if image_dir is not None:
        root = Path(image_dir).expanduser()
    else:
        root = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    meta = [str(n.text).strip() for n in root_node.iterfind("meta/*/labels/label/name")]
    entries: list[tuple[Path, int, int, list[_Shape]]] = []
    sources: list[str] = []
    skipped: dict[str, int] = {}
    for node in sorted(root_node.iter("image"), key=lambda n: str(n.get("name"))):
        name = node.get("name")
        if not name:
            raise DataError(f"{path}: an <image> without a name attribute")
        src = f"{path} image '{name}'"
        w, h = (int(v) for v in _cvat_numbers(node, ("width", "height"), src))
        found: list[_Shape] = []
        for j, child in enumerate(node):
            where = f"{src} <{child.tag}> #{j}"
            geometry = _cvat_geometry(child, where)
            if geometry is None:
                skipped[child.tag] = skipped.get(child.tag, 0) + 1
                continue
            label = child.get("label")
            if not label:
                raise DataError(f"{where}: no label attribute")
            found.append((geometry[0], label, j, geometry[1]))
        entries.append((Path(os.path.normpath(root.absolute() / name)), w, h, found))
        sources.append(src)
    if not entries:
        raise DataError(f"{path}: no <image> elements; export as 'CVAT for images 1.1'")
    _warn_skipped("cvat_to_coco", skipped)
    names = class_names if class_names is not None else (meta or None)
    ds = _dataset(entries, sources, names, "shapes")
    return atomic_write_json(ds.to_coco(image_root=root.absolute(), mask_area=True), out_file)


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


# ----------------------------------------------------------------------------- splits


def split_coco(
    ann_file: str | Path, out_dir: str | Path, val: float, test: float, seed: int
) -> dict[str, int]:
    """One COCO file -> ``train.json``, ``val.json`` (and ``test.json``) in ``out_dir``, split
    by image (an image's annotations go with it); every file keeps all categories and the
    top-level keys (info, licenses), so each reads with the same ``image_dir``. Returns the
    images per split."""
    from e2ekit.core.split import split_items

    path = Path(ann_file).expanduser()
    data = load_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise DataError(f"{path}: a COCO file needs 'images' and 'annotations' lists")
    images = sorted(data["images"], key=lambda im: str(im.get("file_name", "")))
    parts = split_items(images, val, test, seed)
    out = Path(out_dir).expanduser()
    targets = {split: out / f"{split}.json" for split in parts}
    clash = [t for t in targets.values() if t.resolve() == path.resolve()]
    if clash:
        raise DataError(f"the split would overwrite its input {path}; pass --out another folder")
    by_image: dict[Any, list[Any]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann.get("image_id") if isinstance(ann, dict) else None, []).append(ann)
    counts = {}
    for split, idx in parts.items():
        chosen = [images[i] for i in idx]
        anns = [a for im in chosen for a in by_image.get(im.get("id"), [])]
        atomic_write_json({**data, "images": chosen, "annotations": anns}, targets[split])
        counts[split] = len(chosen)
    return counts


def _first_existing(root: Path, names: Sequence[str]) -> Path:
    found = next((root / n for n in names if (root / n).is_dir()), None)
    if found is None:
        raise DataError(f"{root}: no {' or '.join(f'{n}/' for n in names)} folder")
    return found


def split_voc_folder(
    root: str | Path, out_dir: str | Path, val: float, test: float, seed: int
) -> dict[str, Any]:
    """``root/images`` (or ``JPEGImages``) + ``root/annotations`` (or ``Annotations``) VOC
    xml, paired by stem -> ``train.txt``, ``val.txt`` (and ``test.txt``) of ``image xml``
    lines relative to ``root`` (PaddleDetection's list files), plus ``label_list.txt`` of
    the object names found when ``root`` has none. Returns the samples per split."""
    from e2ekit.core.split import (
        IMAGE_SUFFIXES,
        files_by_stem,
        pair_by_stem,
        split_items,
        write_list_files,
    )

    base = Path(root).expanduser()
    image_dir = _first_existing(base, ("images", "JPEGImages"))
    xml_dir = _first_existing(base, ("annotations", "Annotations"))
    pairs = pair_by_stem(
        files_by_stem(image_dir, IMAGE_SUFFIXES),
        files_by_stem(xml_dir, (".xml",)),
        "image(s)",
        "annotation(s)",
    )
    parts = split_items(pairs, val, test, seed)
    out = Path(out_dir).expanduser()
    result: dict[str, Any] = dict(write_list_files(base, pairs, parts, out))
    labels = out / "label_list.txt"
    if not labels.exists() and not (base / "label_list.txt").exists():
        names: set[str] = set()
        for _, xml in pairs:
            try:
                tree = ET.fromstring(read_utf8(xml, DataError))
            except ET.ParseError as exc:
                raise DataError(f"{xml}: not valid XML: {exc}") from None
            names.update((n.text or "").strip() for n in tree.iterfind("object/name"))
        names.discard("")
        atomic_write(labels, "".join(f"{n}\n" for n in sorted(names)))
        result["label_list"] = str(labels)
    return result
