"""Box validation before training: every problem counted, one clear message.

Bad boxes are the detection twin of out-of-range segmentation labels: a zero-size
box makes the box-regression loss NaN, a box outside its image trains the model
on padding, a label >= num_classes crashes deep in the loss. One vectorised pass
over all records finds every such box, counts each kind of problem and keeps the
first offender (file, record, box) so the user can open it; then it either fails
with that report (the default: silent data loss is worse than a stop) or, with
``data.drop_invalid: true``, drops the bad boxes and says how many.

Boxes that stick out of the image by at most ``tolerance`` pixels (1 by default:
rounding in labelling tools, a polygon corner dragged just past the edge) are
clipped silently. Boxes partly outside by more are clipped too but counted and
warned about, since they often mean a wrong image size. A box with no area inside
the image is invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.det.data._io import is_file
from e2ekit.det.data.masks import segmentation_problem
from e2ekit.det.data.records import DetDataset, DetRecord

__all__ = ["INVALID", "ValidationReport", "validate"]

log = logging.getLogger("e2ekit")

# problem -> how the report names it; the order is the order of checks and of the report
INVALID: dict[str, str] = {
    "missing_image": "missing image file(s)",
    "bad_image_size": "image(s) with a non-positive width or height",
    "unknown_label": "box(es) with a label/category not in the class list",
    "non_finite": "box(es) with a NaN or infinite coordinate",
    "empty_box": "zero/negative-size box(es)",
    "outside": "box(es) entirely outside their image",
    "bad_segmentation": "annotation(s) with a malformed segmentation",
}
WARN: dict[str, str] = {"clipped": "box(es) partly outside their image (clipped)"}
DROP_HINT = "set data.drop_invalid: true to drop them"


@dataclass
class ValidationReport:
    """Counts per problem and the first offender of each (``"file record: detail"``).

    ``counts`` has every key of ``INVALID`` and ``WARN``; ``dropped_images`` and
    ``dropped_boxes`` are what ``drop_invalid`` removed (0 otherwise).
    """

    source: str = ""
    num_images: int = 0
    num_boxes: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys({**INVALID, **WARN}, 0))
    first: dict[str, str] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    images_without_boxes: int = 0
    dropped_images: int = 0
    dropped_boxes: int = 0

    @property
    def num_invalid(self) -> int:
        return sum(self.counts[k] for k in INVALID)

    @property
    def ok(self) -> bool:
        """No invalid image or box (clipped boxes are fine)."""
        return self.num_invalid == 0

    def _add(self, problem: str, n: int, first: str) -> None:
        if n:
            self.counts[problem] += n
            self.first.setdefault(problem, first)

    def lines(self, include_warnings: bool = True) -> list[str]:
        """One line per problem found: ``N what (first: where)``."""
        out = []
        names = {**INVALID, **(WARN if include_warnings else {})}
        for key, what in names.items():
            n = self.counts[key]
            if not n:
                continue
            extra = ""
            if key == "unknown_label" and self.unknown_categories:
                extra = (
                    " ["
                    + ", ".join(f"{c}: {k}" for c, k in sorted(self.unknown_categories.items()))
                    + "]"
                )
            out.append(f"{n} {what}{extra} (first: {self.first[key]})")
        return out

    def text(self) -> str:
        head = f"{self.source}: " if self.source else ""
        body = "; ".join(self.lines()) or "no problems"
        return f"{head}{self.num_images} images, {self.num_boxes} boxes: {body}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs and run folders)."""
        return {
            "source": self.source,
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "counts": dict(self.counts),
            "first": dict(self.first),
            "unknown_categories": dict(self.unknown_categories),
            "images_without_boxes": self.images_without_boxes,
            "dropped_images": self.dropped_images,
            "dropped_boxes": self.dropped_boxes,
        }

    def __str__(self) -> str:
        return self.text()


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _describe(ds: DetDataset, rec: DetRecord, i: int, detail: str = "") -> str:
    """``source ref: box [...] class`` for box ``i`` of ``rec`` (a report's first offender)."""
    label = int(rec.labels[i])
    name = ds.class_names[label] if 0 <= label < ds.num_classes else f"label {label}"
    return f"{rec.where(i)}: box {_fmt_box(rec.boxes[i])} {name}{detail}"


def _concat(arrays: list[np.ndarray], tail: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0, *tail), dtype)


def mark_segmentations(
    recs: list[DetRecord], offsets: np.ndarray, mark: Callable[..., None]
) -> None:
    """Mark boxes whose segmentation cannot be decoded (odd coordinate count, fewer than 3
    points, an RLE of another size); a Python pass, so only over records that have masks."""
    if not any(r.segmentations is not None for r in recs):
        return
    bad = np.zeros(int(offsets[-1]), bool)
    details: dict[int, str] = {}
    for i, rec in enumerate(recs):
        if rec.segmentations is None:
            continue
        for j, seg in enumerate(rec.segmentations):
            problem = segmentation_problem(seg, rec.height, rec.width)
            if problem is not None:
                k = int(offsets[i]) + j
                bad[k] = True
                details[k] = problem
    if bad.any():
        mark("bad_segmentation", bad, details)


def validate(
    ds: DetDataset,
    *,
    drop_invalid: bool = False,
    check_files: bool = True,
    tolerance: float = 1.0,
) -> tuple[DetDataset, ValidationReport]:
    """Check every image and box of ``ds``; return the cleaned dataset and the report.

    Checks: image file exists (``check_files``), image size positive, label in
    ``0..K-1`` (a COCO category id absent from ``categories`` arrives as -1), finite
    coordinates, positive width and height, some area inside the image, a segmentation
    (where the data has them) that can be decoded at the image's size. Boxes
    partly outside are clipped to the image (counted when beyond ``tolerance``
    pixels). Without ``drop_invalid`` any invalid image or box raises one
    DataError with the report and the hint to drop them; with it, invalid boxes
    and images whose file is missing or size is bad are dropped and a warning
    gives the counts. The input dataset is not modified.
    """
    report = ValidationReport(
        source=ds.source,
        num_images=len(ds.records),
        num_boxes=ds.num_boxes,
        unknown_categories=dict(ds.unknown_categories),
    )
    recs = ds.records
    # all boxes of all records in one array: one numpy pass instead of one per image
    # (a COCO train file has 118k images; per-image numpy calls would take a minute)
    counts = np.array([r.num_boxes for r in recs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    owner = np.repeat(np.arange(len(recs)), counts)  # record index of each box
    boxes = _concat([r.boxes for r in recs], (4,), np.float32)
    labels = _concat([r.labels for r in recs], (), np.int64)
    sizes = np.array([(r.width, r.height) for r in recs], np.float32).reshape(-1, 2)

    bad_size = (sizes <= 0).any(axis=1)
    missing = (
        np.array([not is_file(r.file) for r in recs], bool)
        if check_files
        else np.zeros(len(recs), bool)
    )
    for i in np.flatnonzero(bad_size):
        r = recs[i]
        report._add("bad_image_size", 1, f"{r.source or r.file}: {r.width}x{r.height}")
    for i in np.flatnonzero(missing):
        r = recs[i]
        where = f"{r.source}: " if r.source and r.source != str(r.file) else ""
        report._add("missing_image", 1, f"{where}{r.file}")
    drop_image = bad_size | missing
    bad = drop_image[owner]  # boxes of dropped images go with them, uncounted as boxes

    def first(mask: np.ndarray, detail: bool = False) -> str:
        j = int(np.flatnonzero(mask)[0])
        rec = recs[int(owner[j])]
        extra = f" in a {rec.width}x{rec.height} image" if detail else ""
        return _describe(ds, rec, j - int(offsets[owner[j]]), extra)

    def mark(problem: str, mask: np.ndarray, detail: bool | dict[int, str] = False) -> None:
        nonlocal bad
        mask = mask & ~bad  # each box counted once, under its first problem
        if mask.any():
            if isinstance(detail, dict):  # per-box explanations (segmentations)
                j = int(np.flatnonzero(mask)[0])
                rec = recs[int(owner[j])]
                text = _describe(ds, rec, j - int(offsets[owner[j]]), f": {detail[j]}")
            else:
                text = first(mask, detail)
            report._add(problem, int(mask.sum()), text)
            bad = bad | mask

    k = ds.num_classes
    mark("unknown_label", (labels < 0) | (labels >= k))
    mark("non_finite", ~np.isfinite(boxes).all(axis=1))
    wh = sizes[owner]
    hi = np.concatenate([wh, wh], axis=1)
    with np.errstate(invalid="ignore"):
        mark("empty_box", (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        clipped = np.minimum(np.maximum(boxes, 0), hi)
        mark("outside", (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]), True)
        mark_segmentations(recs, offsets, mark)
        moved = (np.abs(clipped - boxes) > tolerance).any(axis=1) & ~bad
        changed = ((clipped != boxes).any(axis=1) & ~bad) | bad
    if moved.any():
        report._add("clipped", int(moved.sum()), first(moved, True))

    touched = np.bincount(owner[changed], minlength=len(recs)) > 0
    kept: list[DetRecord] = []
    for i, rec in enumerate(recs):
        if drop_image[i]:
            report.dropped_images += 1
            report.dropped_boxes += rec.num_boxes
            continue
        if touched[i]:  # only records with a clipped or bad box are copied
            lo, up = int(offsets[i]), int(offsets[i + 1])
            keep = ~bad[lo:up]
            report.dropped_boxes += int((~keep).sum())
            rec = replace(rec, boxes=clipped[lo:up]).subset(keep)
        if rec.num_boxes == 0:
            report.images_without_boxes += 1
        kept.append(rec)

    if not report.ok:
        if not drop_invalid:
            raise DataError(f"{report.text()}; {DROP_HINT}")
        log.warning(
            "data.drop_invalid: dropped %d image(s) and %d box(es): %s",
            report.dropped_images,
            report.dropped_boxes,
            report.text(),
        )
    elif report.counts["clipped"]:
        log.warning("%s", report.text())
    cleaned = replace(ds, records=kept, unknown_categories={})
    return cleaned, report
