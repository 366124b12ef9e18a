"""Convert labelme, VIA (VGG Image Annotator), CVAT and VOC annotations to one COCO file.

COCO is the one format training and evaluation need to be fast and exact on
(pycocotools reads it), so other formats are converted once rather than
supported everywhere. Both converters are deterministic (ids 1, 2, ... in sorted
file / list order, so re-running gives identical bytes and diffs stay readable)
and write atomically (a temp file renamed into place), so an interrupted
conversion never leaves a truncated file behind.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core import annotations
from e2ekit.core.annotations import Item
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


def _labelme_files(
    sources: str | Path | Sequence[str | Path], out: Path
) -> tuple[list[Path], Path]:
    """(the labelme json files in sorted order, the folder file names are relative to)."""
    if isinstance(sources, (str, Path)):
        src = Path(sources).expanduser()
        if src.is_dir():  # the output may live in the same folder
            return annotations.labelme_files(src, exclude=out), src
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


def _det_shapes(item: Item) -> list[_Shape]:
    """An item's shapes as boxes; polygons and rotated boxes also keep their vertices (the
    COCO segmentation), the other kinds are box-only."""
    found = []
    for s in item.shapes:
        poly = s.polygon()
        flat = None if poly is None else [float(v) for v in poly.reshape(-1)]
        found.append((s.box(), s.label, s.index, flat))
    return found


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


def _to_coco(
    items: list[Item],
    image_dir: Path | None,
    root: Path,
    class_names: Sequence[str] | None,
    ref_kind: str,
    out_file: str | Path,
    size_keys: str = "",
) -> Path:
    """Write ``items`` (ids 1, 2, ... in this order) as COCO, ``file_name`` relative to
    ``root``. An image is ``image_dir / file`` (None: beside its annotation file); its size
    the one the annotation states, else its header's (``size_keys`` name the missing one)."""
    entries: list[tuple[Path, int, int, list[_Shape]]] = []
    for item in items:
        base = image_dir if image_dir is not None else item.ann_file.parent
        image = Path(os.path.normpath(base.absolute() / item.file))
        if item.width is not None and item.height is not None:
            w, h = item.width, item.height
        else:
            w, h = image_size(image, f"{item.where}{size_keys}")
        entries.append((image, w, h, _det_shapes(item)))
    ds = _dataset(entries, [it.where for it in items], class_names, ref_kind)
    return atomic_write_json(ds.to_coco(image_root=root.absolute(), mask_area=True), out_file)


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
    ``w * h``); points and lines have no area and are skipped with a warning, other shape
    types (a labelme mask) fail naming the file and shape (see
    :mod:`e2ekit.core.annotations`, which reads the files for both kits). The image
    size comes from ``imageWidth``/``imageHeight`` (else the image header). ``class_names``
    fixes the classes and their order (category ids 1..K); without it the classes are the
    sorted set of labels found. ``file_name`` is the image path relative to ``image_root``
    (default: the folder given, or the common folder of the files), which is then the
    ``image_dir`` to read the COCO file with. Returns the path written.
    """
    out = Path(out_file).expanduser()
    files, default_root = _labelme_files(sources, out)
    root = Path(image_root).expanduser() if image_root is not None else default_root
    items = annotations.read_labelme(files)
    for item in items:
        if not item.file:
            raise DataError(f"{item.ann_file}: 'imagePath' missing; is this a labelme file?")
    return _to_coco(items, None, root, class_names, "shapes", out, " imageWidth/imageHeight")


# ----------------------------------------------------------------------------- VIA


def via_to_coco(
    via_file: str | Path,
    out_file: str | Path,
    image_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    attribute: str | None = None,
) -> Path:
    """A VGG Image Annotator (VIA 2) json -> one COCO file; read it back with ``image_dir``.

    Polygons become boxes plus ``segmentation`` polygons (``area`` the mask's pixel area);
    rectangles, circles and ellipses become boxes (a turned ellipse: the box of the turned
    shape); points and polylines have no area and are skipped with a warning, unknown
    shape types fail. The class is the region attribute ``attribute`` (default:
    the region's only attribute, else one named label/class/category/name/type). Images
    (their sizes come from the headers, VIA stores none) are ``image_dir / filename``,
    ``image_dir`` defaulting to the json's folder. Ids are 1, 2, ... in file-name order.
    Returns the path written.
    """
    path = Path(via_file).expanduser()
    root = Path(image_dir).expanduser() if image_dir is not None else path.parent
    items = annotations.read_via(path, attribute, attribute_option="via_to_coco(attribute=...)")
    items.sort(key=lambda it: it.file)  # ids in file-name order
    return _to_coco(items, root, root, class_names, "regions", out_file)


# ----------------------------------------------------------------------------- CVAT


def cvat_to_coco(
    xml_file: str | Path,
    out_file: str | Path,
    image_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A "CVAT for images 1.1" XML -> one COCO file; read it back with ``image_dir``.

    Boxes become boxes; polygons become boxes plus ``segmentation`` polygons (``area`` the
    mask's pixel area), so Mask R-CNN trains on them; a rotated box becomes the polygon of
    its corners; ellipses (turned ones too) and masks keep their bounding boxes (a mask's
    ``rle`` is checked); points and polylines have no area and are skipped with a warning.
    Image sizes come from the XML. The classes are ``class_names``, else the labels the
    XML's meta lists, in its order, else the sorted labels found. ``image_dir`` defaults
    to ``images/`` beside the XML (CVAT's export layout) when it exists, else the XML's
    folder. Returns the path written.
    """
    path = Path(xml_file).expanduser()
    items, meta = annotations.read_cvat(path)
    if image_dir is not None:
        root = Path(image_dir).expanduser()
    else:
        root = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    items.sort(key=lambda it: it.file)  # ids in file-name order
    names = class_names if class_names is not None else (meta or None)
    return _to_coco(items, root, root, names, "shapes", out_file)


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
