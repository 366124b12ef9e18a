"""Readers for the annotation tools' own formats: labelme JSON, VIA (VGG Image Annotator)
``via_region_data.json`` and CVAT for images 1.1 XML.

Each reader returns :class:`Item` s (one per image: its file as the annotation names it,
its size when the annotation states one) holding :class:`Shape` s (a label and a
geometry of one :data:`KINDS`), in file order, so every consumer sees the same shapes,
the same rules and the same messages. What a consumer makes of them (filled label
pixels, boxes and polygons) is its own business.

Rules shared by all readers:

* shapes without area (points, lines, polylines, skeletons, tags) are skipped and
  counted in one warning per call; any other shape type the reader does not know fails,
  naming the file, the shape and the shapes it reads;
* a malformed shape fails with a message naming the file, the image and the shape's
  index in that file (``a.json shapes[3]``, ``via.json x.png regions[0]``,
  ``annotations.xml image 'x.png' <polygon> #2``) and what to fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.core.textio import loads_json, read_utf8

__all__ = [
    "KINDS",
    "NO_AREA",
    "VIA_LABEL_KEYS",
    "Item",
    "Shape",
    "find_image",
    "image_roots",
    "labelme_files",
    "load_json",
    "read_cvat",
    "read_labelme",
    "read_via",
]

log = logging.getLogger("e2ekit")

#: the geometries a :class:`Shape` can hold
KINDS = ("polygon", "rectangle", "rotated_box", "circle", "ellipse", "mask")
#: shape types without area: skipped with a warning, not an error
NO_AREA = ("point", "points", "line", "linestrip", "polyline", "skeleton", "tag")
#: VIA region attribute names tried, in order, when a region has several attributes
VIA_LABEL_KEYS = ("label", "class", "category", "name", "type")


@dataclass
class Shape:
    """One labelled region, as drawn in the annotation tool.

    ``points`` (``(N, 2)`` float x, y) depend on ``kind``: a polygon's vertices; a
    rectangle's two corners (x1, y1), (x2, y2); a rotated box's four corners, already
    turned by ``angle``; a circle's or an ellipse's centre (with ``radii``, an ellipse
    turned by ``angle`` degrees, clockwise on the image, about its centre); a mask's left,
    top corner, with ``mask`` its bool pixels from there. ``index`` is the shape's place
    in its image's list in the file (skipped shapes counted), ``order`` its drawing order
    where the format has one (CVAT's ``z_order``), ``where`` names it in messages.
    """

    kind: str
    label: str
    where: str
    index: int
    points: np.ndarray
    radii: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0
    mask: np.ndarray | None = None
    order: float = 0.0

    def box(self) -> list[float]:
        """The bounding box ``[x1, y1, x2, y2]`` (a rectangle's corners as given)."""
        if self.kind == "rectangle":
            return [float(v) for v in self.points[:2].reshape(-1)]
        if self.kind in ("circle", "ellipse"):
            (cx, cy), (rx, ry) = self.points[0], self.radii
            hx, hy = rx, ry
            if self.angle:  # the box of the turned ellipse, not of the upright one
                a = math.radians(self.angle)
                hx = math.hypot(rx * math.cos(a), ry * math.sin(a))
                hy = math.hypot(rx * math.sin(a), ry * math.cos(a))
            return [float(cx - hx), float(cy - hy), float(cx + hx), float(cy + hy)]
        if self.kind == "mask":
            assert self.mask is not None
            left, top = (float(v) for v in self.points[0])
            h, w = self.mask.shape
            return [left, top, left + w, top + h]
        lo, hi = self.points.min(axis=0), self.points.max(axis=0)
        return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]

    def polygon(self) -> np.ndarray | None:
        """The vertices of a polygon or a rotated box; None for the other kinds."""
        return self.points if self.kind in ("polygon", "rotated_box") else None


@dataclass
class Item:
    """One image and its shapes in file order.

    ``file`` is the image as the annotation names it (possibly with folders, or empty
    when a labelme file only embeds it: see :meth:`embedded`); ``width``/``height`` the
    size it states (a positive int32, else None); ``ann_file`` the annotation file.
    """

    file: str
    ann_file: Path
    where: str
    width: int | None = None
    height: int | None = None
    shapes: list[Shape] = field(default_factory=list)
    image_data: str | None = None

    def embedded(self) -> bytes | None:
        """The image bytes a labelme file embeds (``imageData``), or None."""
        if not self.image_data:
            return None
        try:
            return base64.b64decode(self.image_data, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{self.ann_file}: imageData is not valid base64") from None


# ----------------------------------------------------------------------------- shared


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error names the file and line."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return loads_json(read_utf8(path, DataError))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def find_image(name: str, roots: Sequence[Path], where: str) -> Path:
    """The image ``name`` under the first root that has it (also by its base name)."""
    for root in roots:
        for candidate in (root / name, root / Path(name).name):
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(r) for r in dict.fromkeys(roots))
    raise DataError(
        f"{where}: image '{name}' not found (looked under {looked}); pass --images DIR, "
        "the folder that holds the images"
    )


def image_roots(ann_file: Path, images: str | Path | None) -> list[Path]:
    """Where to look for images: ``images`` if given, else beside the file or in images/."""
    if images is not None:
        return [Path(images).expanduser()]
    return [ann_file.parent, ann_file.parent / "images"]


def _size(value: Any) -> int | None:
    return value if type(value) is int and 0 < value < 2**31 else None


def _points(value: Any, where: str, kind: str, need: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: points must be [x, y] pairs, got {value!r}") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < need or not np.isfinite(arr).all():
        count = len(arr) if arr.ndim else 0
        raise DataError(
            f"{where}: a {kind} needs at least {need} finite [x, y] points, got {count}; "
            "fix or delete the shape in the annotation tool"
        )
    return arr


def _json_numbers(obj: dict[str, Any], keys: Sequence[str], where: str, kind: str) -> list[float]:
    values = [obj.get(k) for k in keys]
    if not all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in values
    ):
        raise DataError(f"{where}: a {kind} needs numbers {', '.join(keys)}, got {values}")
    return [float(v) for v in values]  # type: ignore[arg-type]


def _xml_numbers(node: ET.Element, keys: Sequence[str], where: str) -> list[float]:
    values = [node.get(k) for k in keys]
    try:
        out = [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out = []
    if len(out) != len(keys) or not all(map(math.isfinite, out)):
        raise DataError(f"{where}: a <{node.tag}> needs numbers {', '.join(keys)}, got {values}")
    return out


def _turned(x1: float, y1: float, x2: float, y2: float, degrees: float) -> np.ndarray:
    """The corners of box (x1, y1, x2, y2) turned by ``degrees`` about its centre."""
    cx, cy, t = (x1 + x2) / 2, (y1 + y2) / 2, math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return np.array([(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
                     for x, y in corners])  # fmt: skip


def _kept(raw: Iterable[Any], read: Callable[[Any, int], Shape | None]) -> list[Shape]:
    """``read(entry, index)`` of each entry, in order, less the skipped (None) ones."""
    return [s for j, entry in enumerate(raw) if (s := read(entry, j)) is not None]


class _Skipped:
    """Counts the shapes without area one reader skips; unknown shape types fail."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: dict[str, int] = {}

    def skip_or_fail(self, kind: str, shown: str, where: str, known: Sequence[str]) -> None:
        if kind in NO_AREA:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            return
        raise DataError(
            f"{where}: unknown shape {shown}{did_you_mean(kind, known)}; {self.source} "
            f"shapes read here are {', '.join(known)} (and, skipped, those without area): "
            "redraw the region as a polygon"
        )

    def warn(self) -> None:
        if self.counts:
            log.warning(
                "%s: skipped shapes without area: %s",
                self.source,
                ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())),
            )


# ----------------------------------------------------------------------------- labelme

_LABELME_KINDS = ("polygon", "rectangle", "circle")


def labelme_files(path: Path, exclude: Path | None = None) -> list[Path]:
    """The labelme json files of a folder (recursively, sorted; not ``exclude``) or a file."""
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*.json") if exclude is None or p.resolve() != exclude.resolve()
        )
        if not files:
            raise DataError(f"no labelme .json files under {path}")
        return files
    if not path.is_file():
        raise DataError(f"labelme file not found: {path} (give a .json file or a folder)")
    return [path]


def _labelme_shape(shape: Any, j: int, *, prefix: str, skipped: _Skipped) -> Shape | None:
    where = f"{prefix} shapes[{j}]"
    if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
        raise DataError(f"{where}: a labelme shape needs 'label' and 'points'")
    kind = shape.get("shape_type") or "polygon"  # old labelme files omit it for polygons
    label = str(shape["label"])
    raw = shape["points"]
    if kind == "polygon":
        return Shape("polygon", label, where, j, _points(raw, where, kind, 3))
    if kind == "rectangle":  # two corners in the order they were dragged
        (x1, y1), (x2, y2) = _points(raw, where, kind, 2)[:2]
        pts = np.array([[min(x1, x2), min(y1, y2)], [max(x1, x2), max(y1, y2)]])
        return Shape("rectangle", label, where, j, pts)
    if kind == "circle":  # centre, then a point on the circle
        (cx, cy), (px, py) = _points(raw, where, kind, 2)[:2]
        r = math.hypot(px - cx, py - cy)
        return Shape("circle", label, where, j, np.array([[cx, cy]]), radii=(r, r))
    skipped.skip_or_fail(str(kind), f"type '{kind}'", where, _LABELME_KINDS)
    return None


def read_labelme(files: Iterable[Path]) -> list[Item]:
    """labelme json files (see :func:`labelme_files`), one :class:`Item` each, in order.

    ``file`` is ``imagePath`` as written (relative to the json's folder); ``image_data``
    the embedded image, if any.
    """
    items = []
    skipped = _Skipped("labelme")
    for f in files:
        data = load_json(f)
        if not isinstance(data, dict):
            raise DataError(f"{f}: expected a labelme JSON object, got {type(data).__name__}")
        if "shapes" not in data:
            raise DataError(f"{f}: 'shapes' missing; is this a labelme file?")
        shapes = data["shapes"]
        if not isinstance(shapes, list):
            raise DataError(f"{f}: 'shapes' must be a list, got {type(shapes).__name__}")
        image_data = data.get("imageData")
        item = Item(
            file=str(data.get("imagePath") or ""),
            ann_file=f,
            where=str(f),
            width=_size(data.get("imageWidth")),
            height=_size(data.get("imageHeight")),
            image_data=str(image_data) if image_data else None,
        )
        item.shapes = _kept(shapes, partial(_labelme_shape, prefix=item.where, skipped=skipped))
        items.append(item)
    skipped.warn()
    return items


# ----------------------------------------------------------------------------- VIA

_VIA_KINDS = ("polygon", "rect", "circle", "ellipse")


def _via_label(
    attrs: Any,
    where: str,
    attribute: str | None,
    default: str | None,
    attribute_option: str | None,
    default_option: str | None,
) -> str:
    """A region's class: ``attribute`` of its region_attributes, else its only attribute,
    else one named label/class/...; a region without attributes gets ``default``."""
    if not isinstance(attrs, dict) or not attrs or all(v in ("", None) for v in attrs.values()):
        if default is not None:
            return default
        hint = f", or pass {default_option} for a single-class set" if default_option else ""
        raise DataError(f"{where}: the region has no class attribute; give it one in VIA{hint}")
    key = attribute
    if key is None:
        key = next(iter(attrs)) if len(attrs) == 1 else None
        key = key or next((k for k in VIA_LABEL_KEYS if k in attrs), None)
    if key is None or key not in attrs:
        name = f"pass {attribute_option}" if attribute_option else "name it"
        raise DataError(
            f"{where}: cannot tell the class attribute among {sorted(attrs)}; {name} "
            f"(or call it one of {', '.join(VIA_LABEL_KEYS)})"
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


def _via_shape(
    region: Any, j: int, *, prefix: str, label_of: Any, skipped: _Skipped
) -> Shape | None:
    where = f"{prefix} regions[{j}]"
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        raise DataError(f"{where}: a VIA region needs 'shape_attributes' (an object)")
    sa = region["shape_attributes"]
    kind = str(sa.get("name"))
    if kind not in _VIA_KINDS:
        skipped.skip_or_fail(kind, f"type '{kind}'", where, _VIA_KINDS)
        return None
    if kind == "polygon":
        xs, ys = sa.get("all_points_x"), sa.get("all_points_y")
        try:
            pts = np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], axis=1)
        except (TypeError, ValueError):
            pts = np.zeros((0, 2))
        if pts.ndim != 2 or len(pts) < 3 or not np.isfinite(pts).all():
            raise DataError(
                f"{where}: a polygon needs all_points_x and all_points_y of the same length, "
                f"at least 3 finite points each, got {xs!r} and {ys!r}"
            )
        shape = Shape("polygon", "", where, j, pts)
    elif kind == "rect":
        x, y, w, h = _json_numbers(sa, ("x", "y", "width", "height"), where, kind)
        shape = Shape("rectangle", "", where, j, np.array([[x, y], [x + w, y + h]]))
    elif kind == "circle":
        cx, cy, r = _json_numbers(sa, ("cx", "cy", "r"), where, kind)
        shape = Shape("circle", "", where, j, np.array([[cx, cy]]), radii=(r, r))
    else:
        cx, cy, rx, ry = _json_numbers(sa, ("cx", "cy", "rx", "ry"), where, kind)
        theta = _json_numbers({"theta": sa.get("theta") or 0}, ("theta",), where, kind)[0]
        shape = Shape(  # VIA 2 stores theta in radians
            "ellipse", "", where, j, np.array([[cx, cy]]), (rx, ry), math.degrees(theta)
        )
    shape.label = label_of(region.get("region_attributes"), where)
    return shape


def read_via(
    path: Path,
    attribute: str | None = None,
    default_class: str | None = None,
    attribute_option: str | None = None,
    default_option: str | None = None,
) -> list[Item]:
    """A VIA 2 project (``_via_img_metadata``) or annotation export (also VIA 1 regions).

    The class is the region attribute ``attribute`` (default: the region's only
    attribute, else one named as in :data:`VIA_LABEL_KEYS`); a region without attributes
    gets ``default_class``. ``attribute_option``/``default_option`` say how the caller's
    users set those two (``--attribute NAME``), for the messages. Items keep file order;
    VIA states no image sizes.
    """
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a VIA JSON object, got {type(data).__name__}")
    skipped = _Skipped("via")
    items = []

    def label_of(attrs: Any, where: str) -> str:
        return _via_label(attrs, where, attribute, default_class, attribute_option, default_option)

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
            try:
                regions = [regions[k] for k in sorted(regions, key=int)]
            except ValueError:
                raise DataError(f"{where}: VIA 1 region keys must be numbers") from None
        if not isinstance(regions, list):
            raise DataError(f"{where}: 'regions' must be a list, got {type(regions).__name__}")
        item = Item(name, path, where)
        item.shapes = _kept(
            regions, partial(_via_shape, prefix=where, label_of=label_of, skipped=skipped)
        )
        items.append(item)
    if not items:
        raise DataError(f"{path}: no images in this VIA file")
    skipped.warn()
    return items


# ----------------------------------------------------------------------------- CVAT

_CVAT_KINDS = ("polygon", "box", "ellipse", "mask")


def _cvat_mask(node: ET.Element, where: str) -> tuple[np.ndarray, np.ndarray]:
    left, top, w, h = _xml_numbers(node, ("left", "top", "width", "height"), where)
    width, height = int(w), int(h)
    try:
        counts = [int(c) for c in str(node.get("rle", "")).split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 0 for c in counts) or sum(counts) != width * height:
        raise DataError(
            f"{where}: a mask's rle must be comma-separated run lengths summing to width * "
            f"height ({width * height}), got {sum(counts) if counts else 'none'}"
        )
    values = np.arange(len(counts)) % 2  # runs alternate, background first
    mask = np.repeat(values, counts).astype(bool).reshape(height, width)
    return np.array([[left, top]]), mask


def _cvat_shape(node: ET.Element, j: int, *, prefix: str, skipped: _Skipped) -> Shape | None:
    kind = node.tag
    where = f"{prefix} <{kind}> #{j}"
    label = node.get("label")
    if not label:
        raise DataError(f"{where}: a <{kind}> needs a label attribute")
    if kind == "polygon":
        pairs = [p.split(",") for p in str(node.get("points", "")).split(";") if p.strip()]
        try:
            pts = np.array(pairs, np.float64)
        except ValueError:
            pts = np.zeros((0, 2))
        shape = Shape("polygon", label, where, j, _points(pts, where, kind, 3))
    elif kind == "box":
        x1, y1, x2, y2 = _xml_numbers(node, ("xtl", "ytl", "xbr", "ybr"), where)
        (rotation,) = _xml_numbers(node, ("rotation",), where) if node.get("rotation") else [0.0]
        if rotation:
            pts = _turned(x1, y1, x2, y2, rotation)
            shape = Shape("rotated_box", label, where, j, pts, angle=rotation)
        else:
            shape = Shape("rectangle", label, where, j, np.array([[x1, y1], [x2, y2]]))
    elif kind == "ellipse":
        cx, cy, rx, ry = _xml_numbers(node, ("cx", "cy", "rx", "ry"), where)
        (rotation,) = _xml_numbers(node, ("rotation",), where) if node.get("rotation") else [0.0]
        shape = Shape("ellipse", label, where, j, np.array([[cx, cy]]), (rx, ry), rotation)
    elif kind == "mask":
        corner, mask = _cvat_mask(node, where)
        shape = Shape("mask", label, where, j, corner, mask=mask)
    else:
        skipped.skip_or_fail(kind, f"<{kind}>", where, _CVAT_KINDS)
        return None
    (shape.order,) = _xml_numbers(node, ("z_order",), where) if node.get("z_order") else [0.0]
    return shape


def read_cvat(path: Path) -> tuple[list[Item], list[str]]:
    """A CVAT for images 1.1 XML: the items in file order (shapes in file order, each with
    its ``z_order`` as ``order``) and the labels its meta lists, in order."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        root = ET.fromstring(read_utf8(path, DataError))
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML: {exc}") from None
    if root.tag != "annotations":
        raise DataError(f"{path}: expected <annotations> (CVAT for images 1.1), got <{root.tag}>")
    meta = [str(n.text).strip() for n in root.iterfind("meta/*/labels/label/name")]
    skipped = _Skipped("cvat")
    items = []
    for node in root.iter("image"):
        name = node.get("name")
        if not name:
            raise DataError(f"{path}: an <image> without a name attribute")
        where = f"{path} image '{name}'"
        w, h = (int(v) for v in _xml_numbers(node, ("width", "height"), where))
        item = Item(name, path, where, w, h)
        item.shapes = _kept(node, partial(_cvat_shape, prefix=where, skipped=skipped))
        items.append(item)
    if not items:
        raise DataError(f"{path}: no <image> elements; export as 'CVAT for images 1.1'")
    skipped.warn()
    return items, meta
