"""Polygon annotations (labelme, VIA, COCO, CVAT) -> PaddleSeg's folder of class-id PNGs.

One call reads a source and writes ``out/images/`` (the images, hard-linked or copied,
never re-encoded), ``out/labels/<stem>.png`` (uint8 class ids: 0 background, 255 ignore),
``out/labels.txt`` (class names, background first) and ``out/train.txt``
(``images/x.jpg labels/x.png`` lines). Everything is staged beside ``out`` and moved in
at the end, so a failed conversion leaves ``out`` as it was.

Drawing order decides overlaps, and the later shape wins: labelme shapes and VIA regions
in file order (the annotation tool draws later shapes on top), CVAT shapes by
``z_order`` then file order, COCO instances largest first so a small object on a large
one is not hidden; COCO crowd regions (``iscrowd: 1``) are drawn first as ignore (255),
so an annotated instance inside a crowd keeps its class. Shapes named ``__ignore__``
(labelme's convention) are ignore too. Polygons, boxes and ellipses are filled by PIL's
``ImageDraw`` (its pixel rules: the outline belongs to the shape); COCO polygons and RLEs
are decoded by pycocotools, as COCO's own tools do.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.core.fileio import atomic_write, staged_outputs
from e2ekit.core.textio import loads_json, read_utf8

__all__ = ["FORMATS", "IGNORE", "convert"]

log = logging.getLogger("e2ekit")

FORMATS = ("labelme", "via", "coco", "cvat")
IGNORE = 255
#: names that mark an ignore region (labelme's labels.txt convention)
IGNORE_NAMES = ("__ignore__",)
#: a label-list line with one of these names first is the background (id 0)
BACKGROUND_NAMES = ("_background_", "__background__", "background")
#: VIA region attribute names tried, in order, when a region has several attributes
VIA_LABEL_KEYS = ("label", "class", "category", "name", "type")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: shapes without area: skipped with a warning, not an error
_NO_AREA = ("point", "points", "line", "linestrip", "polyline", "skeleton", "tag")


@dataclass
class Shape:
    """One region to fill: ``kind`` polygon (xy points), box (x1, y1, x2, y2), ellipse
    (cx, cy, rx, ry, degrees) or mask (a bool array at its left/top, or full-size)."""

    kind: str
    label: str
    where: str
    data: Any
    order: float = 0.0


@dataclass
class Item:
    """One image and the shapes drawn on it, in drawing order."""

    name: str  # output file name (the image's own name)
    source: Path | None  # the image file, or None when ``raw`` holds its bytes
    width: int | None
    height: int | None
    where: str
    shapes: list[Shape] = field(default_factory=list)
    raw: bytes | None = None


# ----------------------------------------------------------------------------- reading


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return loads_json(read_utf8(path, DataError))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def _points(value: Any, where: str, need: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: points must be [x, y] pairs, got {value!r}") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < need or not np.isfinite(arr).all():
        what = "a polygon needs at least 3" if need == 3 else f"this shape needs {need}"
        raise DataError(
            f"{where}: {what} finite [x, y] points, got {len(arr) if arr.ndim else 0}; "
            "fix or delete the shape in the annotation tool"
        )
    return arr


def _numbers(obj: dict[str, Any], keys: Sequence[str], where: str, kind: str) -> list[float]:
    values = [obj.get(k) for k in keys]
    try:
        out = [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out = []
    if len(out) != len(keys) or not all(map(math.isfinite, out)):
        raise DataError(f"{where}: a {kind} needs numbers {', '.join(keys)}, got {values}")
    return out


def _skip_or_fail(kind: str, where: str, known: Sequence[str], skipped: dict[str, int]) -> None:
    if kind in _NO_AREA:
        skipped[kind] = skipped.get(kind, 0) + 1
        return
    raise DataError(
        f"{where}: unknown shape type '{kind}'{did_you_mean(kind, known)}; this converter "
        f"fills {', '.join(known)}: redraw the region as a polygon"
    )


def _warn_skipped(source: str, skipped: dict[str, int]) -> None:
    if skipped:
        log.warning(
            "%s: skipped shapes without area: %s",
            source,
            ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
        )


def _find_image(name: str, roots: Sequence[Path], where: str) -> Path:
    for root in roots:
        for candidate in (root / name, root / Path(name).name):
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(r) for r in dict.fromkeys(roots))
    raise DataError(
        f"{where}: image '{name}' not found (looked under {looked}); pass --images DIR, "
        "the folder that holds the images"
    )


def _image_roots(ann_file: Path, images: str | Path | None) -> list[Path]:
    if images is not None:
        return [Path(images).expanduser()]
    return [ann_file.parent, ann_file.parent / "images"]


# ----------------------------------------------------------------------------- labelme


def _labelme_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise DataError(f"no labelme .json files under {path}")
        return files
    if not path.is_file():
        raise DataError(f"--input {path}: no such file or folder")
    return [path]


def _labelme_shape(shape: Any, where: str, skipped: dict[str, int]) -> Shape | None:
    if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
        raise DataError(f"{where}: a labelme shape needs 'label' and 'points'")
    kind = shape.get("shape_type") or "polygon"  # old labelme files omit it for polygons
    label = str(shape["label"])
    if kind == "polygon":
        return Shape("polygon", label, where, _points(shape["points"], where, 3))
    if kind == "rectangle":
        (x1, y1), (x2, y2) = _points(shape["points"], where, 2)[:2]
        return Shape("box", label, where, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    if kind == "circle":  # centre, then a point on the circle
        (cx, cy), (px, py) = _points(shape["points"], where, 2)[:2]
        r = float(math.hypot(px - cx, py - cy))
        return Shape("ellipse", label, where, (cx, cy, r, r, 0.0))
    _skip_or_fail(kind, where, ("polygon", "rectangle", "circle"), skipped)
    return None


def read_labelme(path: Path, images: str | Path | None) -> list[Item]:
    """labelme json files (a folder, searched recursively, or one file)."""
    items = []
    skipped: dict[str, int] = {}
    for f in _labelme_files(path):
        data = _load_json(f)
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise DataError(f"{f}: no 'shapes' list; is this a labelme file?")
        image_path = str(data.get("imagePath") or "")
        raw = None
        source: Path | None = None
        roots = [Path(images).expanduser()] if images is not None else [f.parent]
        try:
            source = _find_image(image_path, roots, str(f)) if image_path else None
        except DataError:
            if not data.get("imageData"):
                raise
        if source is None:
            if not data.get("imageData"):
                raise DataError(f"{f}: no imagePath and no imageData; save it again in labelme")
            try:
                raw = base64.b64decode(str(data["imageData"]), validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"{f}: imageData is not valid base64") from None
        name = Path(image_path).name if image_path else f"{f.stem}.png"
        w, h = data.get("imageWidth"), data.get("imageHeight")
        item = Item(
            name=name,
            source=source,
            width=w if isinstance(w, int) else None,
            height=h if isinstance(h, int) else None,
            where=str(f),
            raw=raw,
        )
        for j, shape in enumerate(data["shapes"]):
            found = _labelme_shape(shape, f"{f} shapes[{j}]", skipped)
            if found is not None:
                item.shapes.append(found)
        items.append(item)
    _warn_skipped("labelme", skipped)
    return items


# ----------------------------------------------------------------------------- VIA


def _via_label(attrs: Any, where: str, attribute: str | None, default: str | None) -> str:
    """A region's class: ``attribute`` of its region_attributes, else its only attribute,
    else one named label/class/...; a region without attributes gets ``default``."""
    if not isinstance(attrs, dict) or not attrs or all(v in ("", None) for v in attrs.values()):
        if default is not None:
            return default
        raise DataError(
            f"{where}: the region has no class attribute; give it one in VIA, or pass "
            "--default-class NAME for a single-class set"
        )
    key = attribute
    if key is None:
        key = next(iter(attrs)) if len(attrs) == 1 else None
        key = key or next((k for k in VIA_LABEL_KEYS if k in attrs), None)
    if key is None or key not in attrs:
        raise DataError(
            f"{where}: which region attribute is the class? it has {sorted(attrs)}; "
            f"pass --attribute NAME (or call it one of {', '.join(VIA_LABEL_KEYS)})"
        )
    value = attrs[key]
    if isinstance(value, dict):  # checkbox / multi-select: {"cat": true, "dog": false}
        ticked = [str(k) for k, v in value.items() if v]
        if len(ticked) != 1:
            raise DataError(f"{where}: attribute '{key}' must select one class, got {ticked}")
        value = ticked[0]
    label = str(value).strip()
    if not label:
        if default is not None:
            return default
        raise DataError(f"{where}: attribute '{key}' is empty; give the region a class")
    return label


def _via_shape(region: Any, where: str, label_of: Any, skipped: dict[str, int]) -> Shape | None:
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        raise DataError(f"{where}: a VIA region needs 'shape_attributes'")
    sa = region["shape_attributes"]
    kind = str(sa.get("name"))
    known = ("polygon", "rect", "circle", "ellipse")
    if kind not in known:
        _skip_or_fail(kind, where, known, skipped)
        return None
    label = label_of(region.get("region_attributes"), where)
    if kind == "polygon":
        xs, ys = sa.get("all_points_x"), sa.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise DataError(f"{where}: a polygon needs all_points_x and all_points_y of one length")
        return Shape("polygon", label, where, _points(list(zip(xs, ys, strict=True)), where, 3))
    if kind == "rect":
        x, y, w, h = _numbers(sa, ("x", "y", "width", "height"), where, kind)
        return Shape("box", label, where, (x, y, x + w, y + h))
    if kind == "circle":
        cx, cy, r = _numbers(sa, ("cx", "cy", "r"), where, kind)
        return Shape("ellipse", label, where, (cx, cy, r, r, 0.0))
    cx, cy, rx, ry = _numbers(sa, ("cx", "cy", "rx", "ry"), where, kind)
    theta = float(sa.get("theta") or 0.0)  # radians in VIA 2
    return Shape("ellipse", label, where, (cx, cy, rx, ry, math.degrees(theta)))


def read_via(
    path: Path, images: str | Path | None, attribute: str | None, default_class: str | None
) -> list[Item]:
    """A VIA 2 project or annotation export (``via_region_data.json``)."""
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a VIA JSON object, got {type(data).__name__}")
    roots = _image_roots(path, images)
    skipped: dict[str, int] = {}
    items = []

    def label_of(attrs: Any, where: str) -> str:
        return _via_label(attrs, where, attribute, default_class)

    for key, entry in data.items():
        if not isinstance(entry, dict) or "filename" not in entry or "regions" not in entry:
            raise DataError(
                f"{path} [{key!r}]: a VIA image entry needs 'filename' and 'regions'; export "
                "it from VIA with Annotation > Export Annotations (as json)"
            )
        name = str(entry["filename"])
        where = f"{path} {name}"
        regions = entry["regions"]
        if isinstance(regions, dict):  # VIA 1: {"0": region, ...}
            regions = [regions[k] for k in sorted(regions, key=int)]
        if not isinstance(regions, list):
            raise DataError(f"{where}: 'regions' must be a list")
        item = Item(Path(name).name, _find_image(name, roots, where), None, None, where)
        for j, region in enumerate(regions):
            found = _via_shape(region, f"{where} regions[{j}]", label_of, skipped)
            if found is not None:
                item.shapes.append(found)
        items.append(item)
    if not items:
        raise DataError(f"{path}: no images in this VIA file")
    _warn_skipped("via", skipped)
    return items


# ----------------------------------------------------------------------------- COCO


def _coco_mask(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, list):
            polys = [[float(v) for v in p] for p in seg]
            if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
                raise DataError(
                    f"{where}: a polygon needs at least 3 [x, y] points (an even count "
                    ">= 6 numbers); fix or delete the annotation"
                )
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(v) for v in seg["size"]] != [h, w]:
                raise DataError(
                    f"{where}: RLE size {seg['size']} is not the image's [height, width] [{h}, {w}]"
                )
            counts = seg["counts"]
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            else:
                raw = counts.encode("ascii") if isinstance(counts, str) else counts
                rle = {"size": [h, w], "counts": raw}
        else:
            raise DataError(
                f"{where}: segmentation must be polygons [[x1, y1, ...]] or an RLE "
                "{'size': [h, w], 'counts': ...}"
            )
        with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy keyword
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*copy")
            return np.asarray(mask_utils.decode(rle), dtype=bool)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the segmentation: {exc}") from None


def read_coco(path: Path, images: str | Path | None) -> tuple[list[Item], list[str]]:
    """A COCO instances json; returns the items and the category names in id order."""
    data = _load_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{path}: a COCO file needs 'images', 'annotations' and 'categories'")
    cats = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DataError(f"{path}: each category needs 'id' and 'name', got {c!r}")
        cats[c["id"]] = str(c["name"])
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DataError(f"{path} annotations[{j}]: needs 'image_id' and 'category_id'")
        if ann["category_id"] not in cats:
            raise DataError(
                f"{path} annotations[{j}]: category_id {ann['category_id']} is not in 'categories'"
            )
        by_image.setdefault(ann["image_id"], []).append((j, ann))
    roots = _image_roots(path, images)
    items = []
    boxes_only = 0
    for im in data["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= set(im):
            raise DataError(f"{path}: each image needs id, file_name, width, height; got {im!r}")
        name, h, w = str(im["file_name"]), int(im["height"]), int(im["width"])
        where = f"{path} {name}"
        item = Item(Path(name).name, _find_image(name, roots, where), w, h, where)
        crowd, solid = [], []
        for j, ann in by_image.get(im["id"], []):
            at = f"{path} annotations[{j}] (image {name})"
            label = cats[ann["category_id"]]
            seg = ann.get("segmentation")
            if seg is None or seg == []:
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise DataError(f"{at}: no segmentation and no bbox")
                boxes_only += 1
                x, y, bw, bh = (float(v) for v in bbox)
                mask = np.zeros((h, w), bool)
                mask[max(round(y), 0) : round(y + bh), max(round(x), 0) : round(x + bw)] = True
            else:
                mask = _coco_mask(seg, h, w, at)
            shape = Shape("mask", label, at, mask, order=-float(mask.sum()))
            (crowd if ann.get("iscrowd") else solid).append(shape)
        for s in crowd:  # crowd first, as ignore; then instances, largest first
            s.label = IGNORE_NAMES[0]
        solid.sort(key=lambda s: s.order)  # stable: equal areas keep file order
        item.shapes = crowd + solid
        items.append(item)
    if boxes_only:
        log.warning(
            "coco: %d annotations have no segmentation; their boxes were filled", boxes_only
        )
    return items, [cats[k] for k in sorted(cats)]


# ----------------------------------------------------------------------------- CVAT


def _cvat_mask(node: ET.Element, where: str, label: str) -> Shape:
    left, top, w, h = (int(float(node.get(k, "nan"))) for k in ("left", "top", "width", "height"))
    try:
        counts = [int(c) for c in str(node.get("rle", "")).split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 0 for c in counts) or sum(counts) != w * h:
        raise DataError(
            f"{where}: a mask's rle must be comma-separated run lengths summing to width * "
            f"height ({w * h}), got {sum(counts) if counts else 'none'}"
        )
    values = np.arange(len(counts)) % 2  # runs alternate, background first
    mask = np.repeat(values, counts).astype(bool).reshape(h, w)
    return Shape("mask", label, where, (left, top, mask))


def _cvat_shape(node: ET.Element, where: str, skipped: dict[str, int]) -> Shape | None:
    kind = node.tag
    label = node.get("label")
    if label is None:
        raise DataError(f"{where}: a <{kind}> needs a label attribute")
    order = float(node.get("z_order") or 0)
    if kind == "polygon":
        pairs = [p.split(",") for p in str(node.get("points", "")).split(";") if p.strip()]
        shape = Shape("polygon", label, where, _points(pairs, where, 3))
    elif kind == "box":
        x1, y1, x2, y2 = _numbers(dict(node.attrib), ("xtl", "ytl", "xbr", "ybr"), where, kind)
        rotation = float(node.get("rotation") or 0.0)
        if rotation:
            cx, cy, t = (x1 + x2) / 2, (y1 + y2) / 2, math.radians(rotation)
            corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            pts = [
                (
                    cx + (x - cx) * math.cos(t) - (y - cy) * math.sin(t),
                    cy + (x - cx) * math.sin(t) + (y - cy) * math.cos(t),
                )
                for x, y in corners
            ]
            shape = Shape("polygon", label, where, np.asarray(pts))
        else:
            shape = Shape("box", label, where, (x1, y1, x2, y2))
    elif kind == "ellipse":
        cx, cy, rx, ry = _numbers(dict(node.attrib), ("cx", "cy", "rx", "ry"), where, kind)
        shape = Shape("ellipse", label, where, (cx, cy, rx, ry, float(node.get("rotation") or 0)))
    elif kind == "mask":
        shape = _cvat_mask(node, where, label)
    else:
        _skip_or_fail(kind, where, ("polygon", "box", "ellipse", "mask"), skipped)
        return None
    shape.order = order
    return shape


def read_cvat(path: Path, images: str | Path | None) -> tuple[list[Item], list[str]]:
    """A CVAT for images 1.1 XML; returns the items and the labels its meta lists."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        root = ET.fromstring(read_utf8(path, DataError))
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML: {exc}") from None
    if root.tag != "annotations":
        raise DataError(f"{path}: expected <annotations> (CVAT for images 1.1), got <{root.tag}>")
    meta = [str(n.text).strip() for n in root.iterfind("meta/*/labels/label/name")]
    roots = _image_roots(path, images)
    skipped: dict[str, int] = {}
    items = []
    for node in root.iter("image"):
        name = node.get("name")
        if not name:
            raise DataError(f"{path}: an <image> without a name attribute")
        where = f"{path} image '{name}'"
        w = _numbers(dict(node.attrib), ("width", "height"), where, "image")
        item = Item(Path(name).name, _find_image(name, roots, where), int(w[0]), int(w[1]), where)
        shapes = []
        for j, child in enumerate(node):
            found = _cvat_shape(child, f"{where} <{child.tag}> #{j}", skipped)
            if found is not None:
                shapes.append((found.order, j, found))
        item.shapes = [s for *_, s in sorted(shapes, key=lambda t: t[:2])]
        items.append(item)
    if not items:
        raise DataError(f"{path}: no <image> elements; export as 'CVAT for images 1.1'")
    _warn_skipped("cvat", skipped)
    return items, meta


# ----------------------------------------------------------------------------- drawing


def _fill(canvas: Image.Image, shape: Shape, value: int) -> None:
    draw = ImageDraw.Draw(canvas)
    if shape.kind == "polygon":
        draw.polygon([(float(x), float(y)) for x, y in shape.data], fill=value)
    elif shape.kind == "box":
        x1, y1, x2, y2 = shape.data
        if x2 >= x1 and y2 >= y1:
            draw.rectangle([x1, y1, x2, y2], fill=value)
    elif shape.kind == "ellipse":
        cx, cy, rx, ry, degrees = shape.data
        if not degrees:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=value)
        else:  # a rotated ellipse as a fine polygon, filled by PIL
            t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            a = math.radians(degrees)
            xs = cx + rx * np.cos(t) * math.cos(a) - ry * np.sin(t) * math.sin(a)
            ys = cy + rx * np.cos(t) * math.sin(a) + ry * np.sin(t) * math.cos(a)
            draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=value)
    else:  # mask: full-size bool, or (left, top, bool) placed on the image
        arr = np.asarray(canvas)
        if isinstance(shape.data, tuple):
            left, top, small = shape.data
            mask = np.zeros(arr.shape, bool)
            h, w = arr.shape
            y0, x0 = max(top, 0), max(left, 0)
            sub = small[y0 - top : h - top, x0 - left : w - left]
            mask[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
        else:
            mask = shape.data
        if mask.shape != arr.shape:
            raise DataError(f"{shape.where}: mask of shape {mask.shape} on a {arr.shape} image")
        out = arr.copy()
        out[mask] = value
        canvas.paste(Image.fromarray(out, mode="L"))


def _image_size(item: Item) -> tuple[int, int]:
    """(width, height) from the image header; a size the annotation states must match."""
    what = item.source if item.raw is None else io.BytesIO(item.raw)
    try:
        with Image.open(what) as im:  # type: ignore[arg-type]
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{item.where}: cannot read image {item.source or 'imageData'}: {exc}"
        ) from None
    if item.width is not None and item.height is not None and (item.width, item.height) != (w, h):
        raise DataError(
            f"{item.where}: the annotation says {item.width}x{item.height} but the image is "
            f"{w}x{h}; the annotation was made for another image"
        )
    return w, h


def read_label_file(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"--label-list {p}: file not found")
    names = [
        ln.strip() for ln in read_utf8(p, DataError).splitlines() if ln.strip() and ln[:1] != "#"
    ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"--label-list {p}: listed twice: {', '.join(dupes)}")
    return names


def class_table(given: Sequence[str] | None, found: Iterable[str]) -> list[str]:
    """Class names by id, background first: ``given`` (a leading background name kept as
    id 0, else ``background`` added) or the sorted labels found."""
    names = [
        n for n in (given if given is not None else sorted(set(found))) if n not in IGNORE_NAMES
    ]
    if names and names[0] in BACKGROUND_NAMES:
        return names
    return ["background", *names]


def convert(
    source: str,
    input_path: str | Path,
    out_dir: str | Path,
    label_list: str | Path | Sequence[str] | None = None,
    images: str | Path | None = None,
    attribute: str | None = None,
    default_class: str | None = None,
) -> dict[str, Any]:
    """Convert ``input_path`` (a ``source`` format, see :data:`FORMATS`) into ``out_dir``.

    ``label_list`` (a file or names) fixes the classes and their ids; without it the classes
    are the category/label order the source declares (COCO categories by id, CVAT's meta
    labels) or else the sorted labels found. Returns a summary: images, classes, shapes.
    """
    path = Path(input_path).expanduser()
    declared: list[str] = []
    if source == "labelme":
        items = read_labelme(path, images)
    elif source == "via":
        items = read_via(path, images, attribute, default_class)
    elif source == "coco":
        items, declared = read_coco(path, images)
    elif source == "cvat":
        items, declared = read_cvat(path, images)
    else:
        raise DataError(
            f"--from {source}: use one of {', '.join(FORMATS)}{did_you_mean(source, FORMATS)}"
        )
    if isinstance(label_list, (str, Path)):
        given: list[str] | None = read_label_file(label_list)
        list_name = str(label_list)
    else:
        given = list(label_list) if label_list is not None else None
        list_name = "the label list"
    found = [s.label for it in items for s in it.shapes]
    names = class_table(given if given is not None else (declared or None), found)
    ids = {n: k for k, n in enumerate(names)}
    ids.update(dict.fromkeys(IGNORE_NAMES, IGNORE))
    if len(names) > IGNORE:
        raise DataError(f"{len(names)} classes do not fit a uint8 label with 255 as ignore")
    seen: dict[str, str] = {}
    for it in items:
        if it.name in seen:
            raise DataError(
                f"two images are both named '{it.name}' ({seen[it.name]} and {it.where}); "
                "their labels would overwrite each other: rename one"
            )
        seen[it.name] = it.where
        if len(it.name.split()) != 1:
            raise DataError(
                f"{it.where}: image name '{it.name}' holds whitespace, which a train.txt "
                "line cannot; rename the image"
            )
        for s in it.shapes:
            if s.label not in ids:
                where = list_name if given is not None else "the classes the source declares"
                raise DataError(
                    f"{s.where}: label '{s.label}' is not in {where} "
                    f"({', '.join(names)}){did_you_mean(s.label, names)}; add it there "
                    "or fix the label"
                )
    out = Path(out_dir).expanduser()
    shapes = 0
    lines = []
    with staged_outputs(out) as staged:
        (staged / "images").mkdir()
        (staged / "labels").mkdir()
        for it in sorted(items, key=lambda i: i.name):
            w, h = _image_size(it)
            canvas = Image.new("L", (w, h), 0)
            for s in it.shapes:
                _fill(canvas, s, ids[s.label])
            shapes += len(it.shapes)
            stem = Path(it.name).stem
            canvas.save(staged / "labels" / f"{stem}.png")
            target = staged / "images" / it.name
            if it.raw is not None:
                target.write_bytes(it.raw)
            else:
                assert it.source is not None
                try:
                    os.link(it.source, target)
                except OSError:  # another file system, or links not allowed
                    shutil.copy2(it.source, target)
            lines.append(f"images/{it.name} labels/{stem}.png\n")
        atomic_write(staged / "labels.txt", "".join(f"{n}\n" for n in names))
        atomic_write(staged / "train.txt", "".join(lines))
    return {
        "output": str(out),
        "images": len(items),
        "shapes": shapes,
        "classes": names,
        "num_classes": len(names),
    }
