"""Instance masks: COCO ``segmentation`` kept raw, checked cheaply, decoded on demand.

A record stores each annotation's segmentation as written (polygons, uncompressed or
compressed RLE): decoding a mask costs H*W bytes per instance, so a dataset of a hundred
thousand images is only decoded sample by sample, and only when a task asks for masks.
pycocotools does the rasterising, so masks match what COCO's own tools (and its mask
mAP) see.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "compact_segmentation",
    "decode_masks",
    "decode_segmentation",
    "has_segmentation",
    "segmentation_area",
    "segmentation_problem",
    "to_json",
]

POLYGON_HINT = "a polygon is a list [x1, y1, x2, y2, ...] of at least 3 points"
RLE_HINT = "an RLE is {'size': [height, width], 'counts': [...] or 'string'}"


def has_segmentation(seg: Any) -> bool:
    """True for a segmentation that describes a mask (None and ``[]`` mean box only)."""
    return seg is not None and not (isinstance(seg, (list, tuple)) and len(seg) == 0)


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _numbers(values: Any) -> bool:
    """A flat list (or compacted array) of finite numbers."""
    if isinstance(values, np.ndarray):
        return values.ndim == 1 and values.dtype.kind in "iuf" and bool(np.isfinite(values).all())
    return isinstance(values, (list, tuple)) and all(_number(v) for v in values)


def compact_segmentation(seg: Any) -> Any:
    """``seg`` with its number lists as numpy arrays (a polygon as float64, uncompressed RLE
    counts as int64): a few times less memory than Python floats for a COCO-sized file, the
    same values. Anything malformed is kept as written, for :func:`segmentation_problem`."""
    try:
        if isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            polys = [np.asarray(p, np.float64) for p in seg]
            return polys if all(p.ndim == 1 for p in polys) else seg
        if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            counts = np.asarray(seg["counts"], np.int64)
            return dict(seg, counts=counts) if counts.ndim == 1 else seg
    except (TypeError, ValueError, OverflowError):
        pass
    return seg


def to_json(seg: Any) -> Any:
    """A (compacted) segmentation as JSON-ready lists, numbers as they were read."""
    if isinstance(seg, dict):
        counts = seg.get("counts")
        return dict(seg, counts=counts.tolist()) if isinstance(counts, np.ndarray) else seg
    if isinstance(seg, (list, tuple)):
        return [p.tolist() if isinstance(p, np.ndarray) else p for p in seg]
    return seg


def _polygon_problem(seg: Sequence[Any]) -> str | None:
    for j, poly in enumerate(seg):
        if not _numbers(poly):
            return f"polygon {j} is not a list of finite numbers; {POLYGON_HINT}"
        if len(poly) % 2:
            return f"polygon {j} has an odd number of coordinates ({len(poly)}); {POLYGON_HINT}"
        if len(poly) < 6:
            return f"polygon {j} has {len(poly) // 2} point(s); {POLYGON_HINT}"
    return None


def _rle_problem(seg: dict[str, Any], height: int, width: int) -> str | None:
    size, counts = seg.get("size"), seg.get("counts")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(_number(v) for v in size)
        or counts is None
    ):
        return f"RLE needs 'size' and 'counts'; {RLE_HINT}"
    if [int(size[0]), int(size[1])] != [height, width]:
        return (
            f"RLE size {list(size)} does not match the image ({height}x{width}); the RLE "
            "was made for another image or with width and height swapped"
        )
    if isinstance(counts, (list, tuple, np.ndarray)):
        if not _numbers(counts) or any(v < 0 for v in counts):
            return f"RLE 'counts' must be non-negative integers; {RLE_HINT}"
        total = int(sum(int(v) for v in counts))
        if total != height * width:
            return (
                f"RLE counts sum to {total}, not height*width = {height * width}; "
                "re-encode the mask at the image's size"
            )
    elif not isinstance(counts, (str, bytes)):
        return f"RLE 'counts' must be a list or a string, got {type(counts).__name__}"
    return None


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with ``seg`` for a ``height`` x ``width`` image, with the fix; None if
    it can be decoded (or is absent)."""
    if not has_segmentation(seg):
        return None
    if isinstance(seg, dict):
        return _rle_problem(seg, height, width)
    if isinstance(seg, (list, tuple)):
        return _polygon_problem(seg)
    return f"segmentation must be polygons or an RLE, got {type(seg).__name__}; {POLYGON_HINT}"


def _rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """One (merged) compressed RLE for polygons or either RLE form."""
    if isinstance(seg, dict):
        counts = seg["counts"]
        if isinstance(counts, (list, tuple, np.ndarray)):  # uncompressed: compress it
            counts = [int(v) for v in counts]
            return mask_utils.frPyObjects(
                {"size": [height, width], "counts": counts}, height, width
            )
        if isinstance(counts, str):
            return {"size": [height, width], "counts": counts.encode("ascii")}
        return {"size": [height, width], "counts": counts}
    polys = [[float(v) for v in p] for p in seg]  # pycocotools wants lists of floats
    return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))


def decode_segmentation(
    seg: Any, height: int, width: int, box: Sequence[float] | None = None
) -> np.ndarray:
    """uint8 (height, width) 0/1 mask; an absent segmentation fills ``box`` (else zeros),
    so instances annotated with a box only still get a mask of their extent."""
    if has_segmentation(seg):
        with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy keyword
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*copy")
            mask = mask_utils.decode(_rle(seg, height, width))
        return np.ascontiguousarray(mask, dtype=np.uint8)
    out = np.zeros((height, width), np.uint8)
    if box is not None:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        out[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1
    return out


def decode_masks(
    segs: Sequence[Any], height: int, width: int, boxes: np.ndarray | None = None
) -> np.ndarray:
    """uint8 (N, height, width) masks for N segmentations (see :func:`decode_segmentation`)."""
    out = np.zeros((len(segs), height, width), np.uint8)
    for i, seg in enumerate(segs):
        out[i] = decode_segmentation(seg, height, width, None if boxes is None else boxes[i])
    return out


def segmentation_area(seg: Any, height: int, width: int) -> float:
    """Pixel area of the decoded mask (COCO's definition of an annotation's ``area``)."""
    return float(mask_utils.area(_rle(seg, height, width)))
