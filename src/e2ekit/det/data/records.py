"""The in-memory form every detection reader produces: one record per image.

COCO json, VOC xml, labelme json and the synthetic set all become a
:class:`DetDataset` of :class:`DetRecord` s, so validation, conversion, training
and evaluation are written once against one shape. Boxes are ``xyxy`` in absolute
pixels (float32) because that is what torchvision's detection ops and transforms
take; labels are contiguous class indices ``0..K-1`` because losses index by them,
and ``category_ids`` remembers the original COCO category id of each index so
detections can be written back in the user's own ids.

Each box also carries a locator (its index in the source file: ``annotations[12]``,
``object[3]``; an int per box, not a string, so a million-box COCO file costs
8 bytes a box) and each record its ``source`` file, so a bad box found long after
reading is still reported by file and record.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.det.data.masks import decode_masks, has_segmentation, segmentation_area, to_json

__all__ = ["DetDataset", "DetRecord"]


def _as_array(value: Any, dtype: Any, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=dtype)
    return arr.reshape((-1, *shape_tail)) if shape_tail or arr.ndim != 1 else arr


@dataclass
class DetRecord:
    """One image and its boxes.

    ``boxes`` float32 (N, 4) xyxy absolute pixels; ``labels`` int64 (N,) class
    index (-1 marks a category the class list lacks, kept so validation can count
    it instead of the reader failing on the first one); ``iscrowd`` bool (N,);
    ``difficult`` bool (N,) (VOC's flag, all False elsewhere); ``ref_ids`` int64
    (N,) each box's index in the source (``{ref_kind}[{ref_id}]`` in messages);
    ``source`` the file the record came from. ``segmentations`` (optional, one per box)
    holds each instance's COCO segmentation as read (polygons or RLE; None or ``[]`` for a
    box without one); None for box-only data. It is decoded only by :meth:`decode_masks`.
    """

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    difficult: np.ndarray | None = None
    ref_ids: np.ndarray | None = None
    ref_kind: str = "box"
    source: str = ""
    segmentations: list[Any] | None = None

    def __post_init__(self) -> None:
        # normalise dtypes/shapes once here so no consumer has to
        self.file = Path(self.file)
        self.image_id = int(self.image_id)
        self.width = int(self.width)
        self.height = int(self.height)
        self.boxes = _as_array(self.boxes, np.float32, (4,))
        n = len(self.boxes)
        self.labels = _as_array(self.labels, np.int64, ())
        self.iscrowd = (
            np.zeros(n, bool) if self.iscrowd is None else _as_array(self.iscrowd, bool, ())
        )
        self.difficult = (
            np.zeros(n, bool) if self.difficult is None else _as_array(self.difficult, bool, ())
        )
        self.ref_ids = (
            np.arange(n, dtype=np.int64)
            if self.ref_ids is None
            else _as_array(self.ref_ids, np.int64, ())
        )
        lengths = {len(self.labels), len(self.iscrowd), len(self.difficult), len(self.ref_ids)}
        if self.segmentations is not None:
            self.segmentations = list(self.segmentations)
            lengths.add(len(self.segmentations))
        if lengths != {n}:
            raise ValueError(
                f"DetRecord {self.file}: {n} boxes but labels/iscrowd/difficult/ref_ids have "
                f"lengths {len(self.labels)}/{len(self.iscrowd)}/{len(self.difficult)}/"
                f"{len(self.ref_ids)}"
                + (f" segmentations {len(self.segmentations)}" if self.segmentations else "")
            )

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    @property
    def has_masks(self) -> bool:
        """Whether the record carries segmentations (box-only records do not)."""
        return self.segmentations is not None

    def decode_masks(self, keep: np.ndarray | None = None) -> np.ndarray:
        """uint8 (N, height, width) instance masks of the boxes ``keep`` selects (all by
        default); a box without a segmentation gets its rectangle filled."""
        idx = np.arange(self.num_boxes) if keep is None else np.asarray(keep)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        segs = self.segmentations or [None] * self.num_boxes
        return decode_masks([segs[i] for i in idx], self.height, self.width, self.boxes[idx])

    def where(self, i: int) -> str:
        """``source kind[index]`` of box ``i``: the place a user opens to fix it."""
        assert self.ref_ids is not None
        src = self.source or str(self.file)
        return f"{src} {self.ref_kind}[{int(self.ref_ids[i])}]"

    def subset(self, keep: np.ndarray | Sequence[bool] | Sequence[int]) -> DetRecord:
        """A copy holding only the boxes ``keep`` selects (a bool mask or indices)."""
        idx = np.asarray(keep)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        assert self.ref_ids is not None and self.difficult is not None
        return replace(
            self,
            boxes=self.boxes[idx],
            labels=self.labels[idx],
            iscrowd=self.iscrowd[idx],
            difficult=self.difficult[idx],
            ref_ids=self.ref_ids[idx],
            segmentations=(
                None if self.segmentations is None else [self.segmentations[i] for i in idx]
            ),
        )


@dataclass
class DetDataset:
    """Records plus the class list; ``category_ids[k]`` is the COCO id of class ``k``.

    ``source`` names where the set came from (annotation or list file) for messages;
    ``unknown_categories`` counts boxes per category id/name the class list lacks
    (their label is -1), so validation can report them by their original name.
    """

    records: list[DetRecord]
    class_names: list[str]
    category_ids: list[int] = field(default_factory=list)
    source: str = ""
    unknown_categories: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        if not self.category_ids:  # no original ids (VOC, labelme): COCO's 1-based default
            self.category_ids = list(range(1, len(self.class_names) + 1))
        self.category_ids = [int(c) for c in self.category_ids]
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"{len(self.class_names)} class names but {len(self.category_ids)} category ids"
            )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        return sum(r.num_boxes for r in self.records)

    def class_counts(self) -> list[int]:
        """Boxes per class (labels outside 0..K-1 are not counted)."""
        k = self.num_classes
        counts = np.zeros(k, np.int64)
        for r in self.records:
            lab = r.labels[(r.labels >= 0) & (r.labels < k)]
            counts += np.bincount(lab, minlength=k)
        return counts.tolist()

    def to_coco(
        self, image_root: str | Path | None = None, mask_area: bool = False
    ) -> dict[str, Any]:
        """A COCO ground-truth dict (images, annotations, categories).

        Boxes become ``[x, y, w, h]`` with ``area = w * h``. ``file_name`` is the
        image path relative to ``image_root`` when given (what ``read_coco``'s
        ``image_dir`` then joins back), else the path as stored. Annotation ids
        count from 1 because pycocotools treats a matched ground-truth id of 0 as
        unmatched. VOC's difficult flag is kept as an extra ``difficult: 1`` key.
        A label outside the class list or a non-finite coordinate cannot be written, so
        it is a DataError naming the box (run ``validate`` first to drop such boxes).
        A box's segmentation is written as read; with ``mask_area`` its ``area`` is the mask's
        pixel area (COCO's definition, what converters write) instead of ``w * h`` (kept
        by default so box evaluation buckets objects by size exactly as before).
        """
        root = Path(image_root) if image_root is not None else None
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        k = self.num_classes
        for rec in self.records:
            name = rec.file
            if root is not None:
                with contextlib.suppress(ValueError):  # outside the root: keep it whole
                    name = rec.file.relative_to(root)
            images.append(
                {
                    "id": rec.image_id,
                    "file_name": name.as_posix(),
                    "width": rec.width,
                    "height": rec.height,
                }
            )
            for i in range(rec.num_boxes):
                label = int(rec.labels[i])
                if not 0 <= label < k:
                    raise DataError(
                        f"{rec.where(i)}: label {label} is not one of the {k} classes; "
                        "cannot write it as COCO (validate the data first)"
                    )
                x1, y1, x2, y2 = (float(v) for v in rec.boxes[i])
                if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                    raise DataError(
                        f"{rec.where(i)}: box {[x1, y1, x2, y2]} has a NaN or infinite "
                        "coordinate, which COCO JSON cannot hold (validate the data first)"
                    )
                w, h = x2 - x1, y2 - y1
                ann: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": rec.image_id,
                    "category_id": self.category_ids[label],
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(rec.iscrowd[i]),
                }
                seg = rec.segmentations[i] if rec.segmentations is not None else None
                if has_segmentation(seg):
                    ann["segmentation"] = to_json(seg)
                    if mask_area:
                        ann["area"] = segmentation_area(seg, rec.height, rec.width)
                if rec.difficult is not None and rec.difficult[i]:
                    ann["difficult"] = 1  # VOC's flag survives a round trip; COCO tools ignore it
                annotations.append(ann)
        categories = [
            {"id": cid, "name": name, "supercategory": ""}
            for cid, name in zip(self.category_ids, self.class_names, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}
