"""Pascal VOC detection annotations (PaddleDetection's list-file layout) -> DetDataset.

A list file names one sample per line as ``image_path xml_path``, relative to
``root`` (PaddleDetection/PaddleX's ``train_list.txt``); ``label_list`` names one
class per line, its line number being the class index. For convenience a line
with a single bare id (VOC's own ``ImageSets/Main/<split>.txt``) is read as
``JPEGImages/<id>.jpg Annotations/<id>.xml``.

Coordinates: VOC's ``xmin..xmax`` are kept as they are, the convention of
PaddleDetection's ``VOCDataSet`` (and of most VOC->COCO converters, ``w = xmax -
xmin``): no 1-based shift. So a box with ``xmin == xmax`` (BCCD has one) has zero
width and is reported by ``validate`` rather than silently turned into a 1-pixel
box, and a VOC set converted to COCO evaluates the same as PaddleDetection's.
(Detectron2 instead subtracts 1 from ``xmin``/``ymin``; the difference is under a
pixel and does not move mAP measurably.) Unlike PaddleDetection, the reader
neither clips nor drops boxes: ``validate`` does that, and says how many.
Images without objects are kept as negatives (PaddleDetection drops them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from e2ekit.core.errors import DataError, did_you_mean
from e2ekit.core.textio import read_utf8
from e2ekit.det.data._io import image_size, is_file
from e2ekit.det.data.records import DetDataset, DetRecord

__all__ = ["parse_voc_xml", "read_label_list", "read_list_file", "read_voc"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def _resolve(root: Path, name: str | Path) -> Path:
    """A path from a config or list line: absolute, else under ``root``, else as given."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    under = root / p
    return under if under.exists() or not p.exists() else p


def read_label_list(label_list: str | Path | Sequence[str], root: Path) -> list[str]:
    """Class names from a label file (one per line; blank lines and ``#`` skipped) or a list."""
    if not isinstance(label_list, (str, Path)):
        names = [str(n).strip() for n in label_list]
        places = [f"data.label_list[{k}]" for k in range(len(names))]
        where = "data.label_list"
    else:
        path = _resolve(root, label_list)
        if not path.is_file():
            raise DataError(f"label list not found: {label_list} (looked in {root} and .)")
        lines = read_utf8(path, DataError).splitlines()
        kept = [
            (k, ln.strip())
            for k, ln in enumerate(lines, start=1)
            if ln.strip() and not ln.strip().startswith("#")
        ]
        names = [n for _, n in kept]
        places = [f"{path}:{k}" for k, _ in kept]
        where = str(path)
    if not names:
        raise DataError(f"{where}: no class names (expected one name per line)")
    seen: dict[str, str] = {}
    for n, place in zip(names, places, strict=True):
        if n in seen:
            raise DataError(f"{place}: class '{n}' is listed twice (also at {seen[n]})")
        seen[n] = place
    return names


def read_list_file(root: Path, list_file: str | Path) -> tuple[Path, list[tuple[Path, Path, int]]]:
    """(list path, [(image, xml, line number)]); missing xml files are one DataError."""
    lf = _resolve(root, list_file)
    if not lf.is_file():
        raise DataError(f"list file not found: {list_file} (looked in {root} and .)")
    pairs: list[tuple[Path, Path, int]] = []
    missing: list[str] = []
    for line_no, line in enumerate(read_utf8(lf, DataError).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) == 1 and Path(fields[0]).suffix == "":  # an ImageSets id
            sid = fields[0]
            xml = root / "Annotations" / f"{sid}.xml"
            stems = [root / "JPEGImages" / f"{sid}{s}" for s in _IMAGE_SUFFIXES]
            image = next((p for p in stems if is_file(p)), stems[0])
        elif len(fields) == 2:
            image, xml = (root / f for f in fields)
        else:
            raise DataError(
                f"{lf}:{line_no}: expected 'image_path xml_path' (or a bare VOC id), got "
                f"{len(fields)} fields: {line.strip()!r}"
            )
        if not is_file(xml):
            missing.append(f"{lf}:{line_no}: {xml}")
        pairs.append((image, xml, line_no))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(
            f"{len(missing)} annotation file(s) not found: {'; '.join(missing[:3])}{more}; "
            "check data.root and the paths in the list"
        )
    if not pairs:
        raise DataError(f"{lf}: the list has no samples")
    return lf, pairs


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: <{tag}> missing or empty")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is not a number: {text!r}") from None


def _size(text: str | None) -> int:
    """A <size> value in pixels; 0 (read the image instead) when missing or not a
    plausible size (not a number, NaN, inf, beyond 2**31)."""
    try:
        value = float((text or "0").strip() or 0)
    except ValueError:
        return 0
    return int(value) if 0 < value < 2**31 else 0


def parse_voc_xml(xml: Path, image: Path, class_index: dict[str, int], image_id: int) -> DetRecord:
    """One VOC annotation file -> DetRecord; an unknown class name is a DataError."""
    try:
        tree = ET.parse(xml)
    except ET.ParseError as exc:
        raise DataError(f"{xml}: not valid XML: {exc}") from None
    ann = tree.getroot()
    width = height = 0
    size = ann.find("size")
    if size is not None:
        width, height = _size(size.findtext("width")), _size(size.findtext("height"))
    if width <= 0 or height <= 0:  # labelling tools sometimes write 0x0: trust the image
        width, height = image_size(image, f"{xml} <size>")
    boxes: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    for j, obj in enumerate(ann.findall("object")):
        where = f"{xml} object[{j}]"
        name = _text(obj, "name", where)
        if name not in class_index:
            valid = ", ".join(class_index)
            raise DataError(
                f"{where}: class '{name}' is not in the label list ({valid})"
                f"{did_you_mean(name, class_index)}; add it to data.label_list or fix the xml"
            )
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{where}: <bndbox> missing")
        boxes.append([_number(bnd, t, where) for t in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_index[name])
        flag = (obj.findtext("difficult") or "0").strip()
        difficult.append(flag not in ("", "0", "false", "False"))
    n = len(boxes)
    with np.errstate(over="ignore"):  # beyond float32: inf, which validate reports
        array = np.array(boxes, np.float32).reshape(-1, 4)
    return DetRecord(
        image_id=image_id,
        file=image,
        width=width,
        height=height,
        boxes=array,
        labels=np.array(labels, np.int64),
        iscrowd=np.zeros(n, bool),
        difficult=np.array(difficult, bool),
        ref_kind="object",
        source=str(xml),
    )


def read_voc(
    root: str | Path,
    list_file: str | Path,
    label_list: str | Path | Sequence[str],
) -> DetDataset:
    """Read the samples of ``list_file`` (paths relative to ``root``) with ``label_list``.

    ``label_list`` is a file (relative to ``root`` or absolute) or the class names
    themselves. Image ids are 1, 2, ... in list order (deterministic, and never 0,
    which some COCO tools treat as "no id"). Image files are not opened unless an
    xml lacks its size; ``validate(check_files=True)`` reports missing images.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"data.root {root_path} is not a folder")
    names = read_label_list(label_list, root_path)
    class_index = {n: k for k, n in enumerate(names)}
    lf, pairs = read_list_file(root_path, list_file)
    records = [
        parse_voc_xml(xml, image, class_index, image_id)
        for image_id, (image, xml, _) in enumerate(pairs, start=1)
    ]
    return DetDataset(records=records, class_names=names, source=str(lf))
