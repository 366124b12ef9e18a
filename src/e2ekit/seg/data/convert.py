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

import io
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from e2ekit.core import annotations
from e2ekit.core.annotations import Item, Shape, find_image, image_roots, load_json
from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.core.fileio import atomic_write, staged_outputs
from e2ekit.core.textio import read_utf8

__all__ = ["FORMATS", "IGNORE", "convert"]

log = logging.getLogger("e2ekit")

FORMATS = ("labelme", "via", "coco", "cvat")
IGNORE = 255
#: names that mark an ignore region (labelme's labels.txt convention)
IGNORE_NAMES = ("__ignore__",)
#: a label-list line with one of these names first is the background (id 0)
BACKGROUND_NAMES = ("_background_", "__background__", "background")


@dataclass
class _Image:
    """One image to write: the annotation's :class:`Item`, its output name and the image
    file (or, for a labelme file that only embeds it, its bytes)."""

    item: Item
    name: str
    source: Path | None
    raw: bytes | None = None

    @property
    def where(self) -> str:
        return self.item.where


# ----------------------------------------------------------------------------- reading


def read_labelme(path: Path, images: str | Path | None) -> list[_Image]:
    """labelme json files (a folder, searched recursively, or one file)."""
    out = []
    for item in annotations.read_labelme(annotations.labelme_files(path)):
        f = item.ann_file
        roots = [Path(images).expanduser()] if images is not None else [f.parent]
        source: Path | None = None
        try:
            source = find_image(item.file, roots, item.where) if item.file else None
        except DataError:
            if not item.image_data:
                raise
        raw = None
        if source is None:
            raw = item.embedded()
            if raw is None:
                raise DataError(f"{f}: no imagePath and no imageData; save it again in labelme")
        name = Path(item.file).name if item.file else f"{f.stem}.png"
        out.append(_Image(item, name, source, raw))
    return out


def read_via(
    path: Path, images: str | Path | None, attribute: str | None, default_class: str | None
) -> list[_Image]:
    """A VIA 2 project or annotation export (``via_region_data.json``)."""
    items = annotations.read_via(
        path, attribute, default_class, "--attribute NAME", "--default-class NAME"
    )
    roots = image_roots(path, images)
    return [_Image(it, Path(it.file).name, find_image(it.file, roots, it.where)) for it in items]


def read_cvat(path: Path, images: str | Path | None) -> tuple[list[_Image], list[str]]:
    """A CVAT for images 1.1 XML; returns the images and the labels its meta lists. Shapes
    are drawn by ``z_order``, then file order."""
    items, meta = annotations.read_cvat(path)
    roots = image_roots(path, images)
    out = []
    for it in items:
        it.shapes.sort(key=lambda s: (s.order, s.index))
        out.append(_Image(it, Path(it.file).name, find_image(it.file, roots, it.where)))
    return out, meta


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


def read_coco(path: Path, images: str | Path | None) -> tuple[list[_Image], list[str]]:
    """A COCO instances json; returns the images and the category names in id order."""
    data = load_json(path)
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
    roots = image_roots(path, images)
    items = []
    boxes_only = 0
    for im in data["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= set(im):
            raise DataError(f"{path}: each image needs id, file_name, width, height; got {im!r}")
        name, h, w = str(im["file_name"]), int(im["height"]), int(im["width"])
        where = f"{path} {name}"
        item = Item(name, path, where, w, h)
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
            corner = np.zeros((1, 2))
            shape = Shape("mask", label, at, j, corner, mask=mask, order=-float(mask.sum()))
            (crowd if ann.get("iscrowd") else solid).append(shape)
        for s in crowd:  # crowd first, as ignore; then instances, largest first
            s.label = IGNORE_NAMES[0]
        solid.sort(key=lambda s: s.order)  # stable: equal areas keep file order
        item.shapes = crowd + solid
        items.append(_Image(item, Path(name).name, find_image(name, roots, where)))
    if boxes_only:
        log.warning(
            "coco: %d annotations have no segmentation; their boxes were filled", boxes_only
        )
    return items, [cats[k] for k in sorted(cats)]


# ----------------------------------------------------------------------------- drawing


def _fill(canvas: Image.Image, shape: Shape, value: int) -> None:
    draw = ImageDraw.Draw(canvas)
    if shape.kind in ("polygon", "rotated_box"):
        draw.polygon([(float(x), float(y)) for x, y in shape.points], fill=value)
    elif shape.kind == "rectangle":
        x1, y1, x2, y2 = shape.box()
        if x2 >= x1 and y2 >= y1:
            draw.rectangle([x1, y1, x2, y2], fill=value)
    elif shape.kind in ("circle", "ellipse"):
        (cx, cy), (rx, ry), degrees = shape.points[0], shape.radii, shape.angle
        if not degrees:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=value)
        else:  # a rotated ellipse as a fine polygon, filled by PIL
            t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            a = math.radians(degrees)
            xs = cx + rx * np.cos(t) * math.cos(a) - ry * np.sin(t) * math.sin(a)
            ys = cy + rx * np.cos(t) * math.sin(a) + ry * np.sin(t) * math.cos(a)
            draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=value)
    else:  # mask: bool pixels from its left/top corner (COCO's: full-size, at 0, 0)
        assert shape.mask is not None
        arr = np.asarray(canvas)
        left, top = (int(v) for v in shape.points[0])
        small = shape.mask
        mask = np.zeros(arr.shape, bool)
        h, w = arr.shape
        y0, x0 = max(top, 0), max(left, 0)
        sub = small[y0 - top : h - top, x0 - left : w - left]
        mask[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
        out = arr.copy()
        out[mask] = value
        canvas.paste(Image.fromarray(out, mode="L"))


def _image_size(image: _Image) -> tuple[int, int]:
    """(width, height) from the image header; a size the annotation states must match."""
    what = image.source if image.raw is None else io.BytesIO(image.raw)
    try:
        with Image.open(what) as im:  # type: ignore[arg-type]
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{image.where}: cannot read image {image.source or 'imageData'}: {exc}"
        ) from None
    stated = (image.item.width, image.item.height)
    if None not in stated and stated != (w, h):
        raise DataError(
            f"{image.where}: the annotation says {stated[0]}x{stated[1]} but the image is "
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
    found = [s.label for it in items for s in it.item.shapes]
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
        for s in it.item.shapes:
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
            for s in it.item.shapes:
                _fill(canvas, s, ids[s.label])
            shapes += len(it.item.shapes)
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
