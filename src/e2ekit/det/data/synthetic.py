"""A built-in synthetic detection set in COCO format: coloured shapes on clutter.

Made so a detector has something real to learn in minutes on a CPU, and so a
broken pipeline shows up as a low mAP rather than passing by luck:

- the class is the *shape* (circle, square, triangle, cross, star); colours are
  drawn independently of the class, so colour says nothing;
- sizes span 6-60% of the image side (log-uniform, so small objects are as common
  as large ones) with aspect ratios 1:2..2:1, so every scale of a detector is used;
- objects may overlap, but each keeps at least half of its pixels visible (a
  target the model cannot see would only teach it to guess); boxes are the
  whole shape's extent, occluded part included;
- the background is a colour gradient with blotches, lines and small jagged
  distractor blobs that belong to no class, plus Gaussian noise.

Each object is drawn into its own small mask and its box is that mask's exact
extent, so boxes are tight to the pixel. The COCO files also carry each object's
``segmentation``: a compressed RLE of its pixels still visible in the image (drawn and
not covered by a later object), for instance-mask models; boxes and images do not depend
on it. Rendering is PIL drawing on small crops
plus a few vectorised numpy passes (a 160x160 image takes a few milliseconds), and
is deterministic per (seed, split, index).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from e2ekit.core.cache import cached_folder
from e2ekit.core.errors import ConfigError
from e2ekit.core.fileio import atomic_write_json
from e2ekit.core.paths import data_cache_dir
from e2ekit.det.data.records import DetDataset, DetRecord

__all__ = [
    "DEFAULTS",
    "SHAPES",
    "builtin_coco",
    "builtin_paths",
    "make_synthetic_coco",
    "render_sample",
]

# Bump when the generator's output changes, so cached copies are rebuilt.
GENERATOR_VERSION = 2  # 2: segmentations (visible pixels as RLE)

SHAPES = ("circle", "square", "triangle", "cross", "star")

DEFAULTS: dict[str, Any] = {
    "name": "shapes",
    "num_train": 500,
    "num_val": 100,
    "size": 160,
    "num_classes": 4,
    "seed": 0,
    "max_objects": 6,
    "min_scale": 0.06,
    "max_scale": 0.6,
    "image_format": "jpg",
}

_SPLIT_CODE = {"train": 1, "val": 2}
_MIN_VISIBLE = 0.5  # every object keeps at least this share of its pixels visible


def _star(rng: np.random.Generator) -> np.ndarray:
    """A 5-point star's 10 vertices around the origin, randomly rotated."""
    angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * (np.pi / 5)
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A (w, h) 'L' mask of one shape filling its box edge to edge."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    r, b = w - 1, h - 1  # PIL's inclusive right/bottom pixel
    if kind == "circle":
        draw.ellipse([0, 0, r, b], fill=255)
    elif kind == "square":
        draw.rectangle([0, 0, r, b], fill=255)
    elif kind == "triangle":
        t = rng.uniform(0.15, 0.85)
        side = int(rng.integers(4))  # where the apex points
        if side == 0:
            pts = [(0, b), (r, b), (t * r, 0)]
        elif side == 1:
            pts = [(0, 0), (r, 0), (t * r, b)]
        elif side == 2:
            pts = [(r, 0), (r, b), (0, t * b)]
        else:
            pts = [(0, 0), (0, b), (r, t * b)]
        draw.polygon(pts, fill=255)
    elif kind == "cross":
        tw = max(1.0, w * rng.uniform(0.28, 0.42))
        th = max(1.0, h * rng.uniform(0.28, 0.42))
        cx, cy = r * rng.uniform(0.4, 0.6), b * rng.uniform(0.4, 0.6)
        draw.rectangle([0, cy - th / 2, r, cy + th / 2], fill=255)
        draw.rectangle([cx - tw / 2, 0, cx + tw / 2, b], fill=255)
    elif kind == "star":
        pts = _star(rng)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pts = (pts - lo) / (hi - lo) * np.array([r, b])
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    else:
        raise ValueError(f"unknown shape {kind}")
    return mask


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A random colour clearly different from ``avoid`` (the local background)."""
    c = rng.uniform(0, 255, 3)
    for _ in range(10):
        if np.abs(c - avoid).mean() > 60:
            break
        c = rng.uniform(0, 255, 3)
    return int(c[0]), int(c[1]), int(c[2])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32: a two-colour gradient with low-frequency blotches."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    cell = int(rng.integers(8, 24))
    small = rng.normal(0, rng.uniform(5, 25), (h // cell + 2, w // cell + 2, 3))
    blotch = np.repeat(np.repeat(small, cell, 0), cell, 1)[:h, :w]
    return (img + blotch).astype(np.float32)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, h: int, w: int) -> None:
    """Lines, dots and jagged blobs: edges and colour that belong to no class."""
    side = min(h, w)
    for _ in range(int(rng.integers(1, 6))):
        pts = rng.uniform(0, [w, h, w, h]).tolist()
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=col, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 5))):  # jagged blobs, small and irregular
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        n = int(rng.integers(7, 13))
        # evenly spread angles, ragged radii: potato-like splats, never a clean triangle
        ang = rng.uniform(0, 2 * np.pi) + np.arange(n) * (2 * np.pi / n)
        ang += rng.uniform(-0.25, 0.25, n) * (2 * np.pi / n)
        rad = side * rng.uniform(0.02, 0.07) * rng.uniform(0.5, 1.0, n)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.polygon([tuple(p) for p in poly.tolist()], fill=col)
    for _ in range(int(rng.integers(0, 12))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rr = rng.uniform(0.5, 1.8)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=col)


def render_sample(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_classes: int = 4,
    first_class: int = 0,
    max_objects: int = 6,
    min_scale: float = 0.06,
    max_scale: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8, its boxes float32 (N, 4) xyxy and labels int64 (N,).

    The first object is of ``first_class`` (so a split cycling it covers every
    class); the rest are random. An object that cannot be placed (20 tries)
    without hiding more than half of an earlier one's pixels is skipped.
    """
    image, boxes, labels, _ = _render(
        rng, size, num_classes, first_class, max_objects, min_scale, max_scale
    )
    return image, boxes, labels


def _render(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_classes: int,
    first_class: int,
    max_objects: int,
    min_scale: float,
    max_scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render_sample` plus ``top`` int64 (H, W): the index of the object visible at
    each pixel (-1 for none), which gives each object's mask without touching the rng.
    """
    h, w = size
    side = min(h, w)
    bg = _background(rng, h, w)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _clutter(rng, draw, h, w)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    top = np.full((h, w), -1, np.int64)  # index of the object drawn last at each pixel
    visible = np.zeros(0, np.int64)  # per object: its pixels still uncovered
    total = np.zeros(0, np.int64)  # per object: its pixels when drawn
    lo, hi = np.log(min_scale), np.log(max_scale)
    for j in range(int(rng.integers(1, max_objects + 1))):
        cls = first_class if j == 0 else int(rng.integers(num_classes))
        s = side * float(np.exp(rng.uniform(lo, hi)))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        if SHAPES[cls] in ("circle", "square", "star") and rng.random() < 0.5:
            aspect = 1.0  # keep the canonical form common
        bw = int(np.clip(round(s * np.sqrt(aspect)), 4, w - 2))
        bh = int(np.clip(round(s / np.sqrt(aspect)), 4, h - 2))
        mask = _shape_mask(SHAPES[cls], bw, bh, rng)
        ext = mask.getbbox()  # the drawn pixels' exact extent (right/bottom exclusive)
        if ext is None:
            continue
        pix = np.asarray(mask) > 0
        placed = None
        for _ in range(20):
            x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            region = top[y1 : y1 + bh, x1 : x1 + bw]  # a view: writing it updates ``top``
            under = region[pix]  # ids of the objects this shape would cover
            lost = np.bincount(under[under >= 0], minlength=len(visible))
            if (visible - lost < _MIN_VISIBLE * total).any():
                continue
            placed = (x1, y1, region, lost)
            break
        if placed is None:
            continue
        x1, y1, region, lost = placed
        region[pix] = len(boxes)
        visible = np.append(visible - lost, pix.sum())
        total = np.append(total, pix.sum())
        local = bg[y1 : y1 + bh, x1 : x1 + bw].reshape(-1, 3).mean(axis=0)
        image.paste(_colour(rng, local), (x1, y1, x1 + bw, y1 + bh), mask)
        boxes.append(np.array([x1 + ext[0], y1 + ext[1], x1 + ext[2], y1 + ext[3]], np.float32))
        labels.append(cls)
    arr = np.asarray(image, dtype=np.float32)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(2.0, 10.0)
    out = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    return (
        out,
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        top,
    )


def _segmentations(top: np.ndarray, count: int) -> list[dict[str, Any]]:
    """Compressed COCO RLE of each object's visible pixels (JSON-ready: counts as str)."""
    out = []
    for j in range(count):
        rle = mask_utils.encode(np.asfortranarray((top == j).astype(np.uint8)))
        out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return out


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in, types normalised, ranges checked (ConfigError naming the key)."""
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"builtin detection dataset has no parameter {', '.join(unknown)}; "
            f"valid: {', '.join(DEFAULTS)}"
        )
    p = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if p["name"] != "shapes":
        raise ConfigError(f"unknown builtin detection dataset '{p['name']}'; available: shapes")
    size = p["size"]
    hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(map(int, size))
    if len(hw) != 2 or min(hw) < 32:
        raise ConfigError(f"builtin shapes size must be N or [H, W] with both >= 32, got {size}")
    if not 1 <= int(p["num_classes"]) <= len(SHAPES):
        raise ConfigError(
            f"builtin shapes num_classes must be 1..{len(SHAPES)} ({', '.join(SHAPES)}), "
            f"got {p['num_classes']}"
        )
    if not 0 < float(p["min_scale"]) <= float(p["max_scale"]) <= 0.95:
        raise ConfigError(
            f"builtin shapes need 0 < min_scale <= max_scale <= 0.95, got "
            f"{p['min_scale']}, {p['max_scale']}"
        )
    if str(p["image_format"]) not in ("jpg", "png"):
        raise ConfigError(
            f"builtin shapes image_format must be jpg or png, got {p['image_format']}"
        )
    if int(p["max_objects"]) < 1 or int(p["num_train"]) < 0 or int(p["num_val"]) < 0:
        raise ConfigError("builtin shapes need max_objects >= 1 and num_train, num_val >= 0")
    return {
        "name": "shapes",
        "num_train": int(p["num_train"]),
        "num_val": int(p["num_val"]),
        "size": [hw[0], hw[1]],
        "num_classes": int(p["num_classes"]),
        "seed": int(p["seed"]),
        "max_objects": int(p["max_objects"]),
        "min_scale": float(p["min_scale"]),
        "max_scale": float(p["max_scale"]),
        "image_format": str(p["image_format"]),
    }


def make_synthetic_coco(root: str | Path, params: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``train.json``, ``val.json``, ``images/{train,val}/``, ``meta.json`` under ``root``.

    Returns the four paths a COCO config needs (``train_ann``, ``train_images``,
    ``val_ann``, ``val_images``). The same params give identical files.
    """
    p = _params(params)
    root = Path(root)
    h, w = p["size"]
    names = list(SHAPES[: p["num_classes"]])
    out: dict[str, Path] = {}
    for split in ("train", "val"):
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(p[f"num_{split}"]):
            rng = np.random.default_rng([p["seed"], _SPLIT_CODE[split], i])
            image, boxes, labels, top = _render(
                rng, (h, w), p["num_classes"], i % p["num_classes"], p["max_objects"],
                p["min_scale"], p["max_scale"],
            )  # fmt: skip
            file = image_dir / f"{i:06d}.{p['image_format']}"
            file.write_bytes(_encode(image, p["image_format"]))
            crowd = np.zeros(len(boxes), bool)
            segs = _segmentations(top, len(boxes))
            records.append(DetRecord(i + 1, file, w, h, boxes, labels, crowd, segmentations=segs))
        ds = DetDataset(records=records, class_names=names)
        out[f"{split}_ann"] = atomic_write_json(
            root / f"{split}.json", ds.to_coco(image_dir), indent=None
        )
        out[f"{split}_images"] = image_dir
    meta = {**p, "class_names": names, "generator_version": GENERATOR_VERSION}
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def builtin_coco(params: dict[str, Any] | None = None) -> Path:
    """The folder of the built-in set for ``params``, generated once and reused.

    Cached under ``data_cache_dir()`` in a folder named by a hash of the full
    params and published whole (:func:`e2ekit.core.cache.cached_folder`), so a
    reader never sees a half-written set and two processes racing to build it end
    up sharing one copy.
    """
    p = _params(params)
    return cached_folder(
        data_cache_dir(),
        f"det-{p['name']}",
        {**p, "generator_version": GENERATOR_VERSION},
        lambda folder: make_synthetic_coco(folder, p),
    )


def builtin_class_names(params: dict[str, Any] | None = None) -> list[str]:
    """The built-in set's class names, known without generating a single image."""
    return list(SHAPES[: _params(params)["num_classes"]])


def builtin_paths(params: dict[str, Any] | None = None) -> dict[str, Path]:
    """``train_ann``, ``train_images``, ``val_ann``, ``val_images`` of the built-in set.

    The keys are the ``data.*`` config keys of the COCO format, so a config's
    builtin data can be resolved with one ``update``.
    """
    root = builtin_coco(params)
    return {
        "train_ann": root / "train.json",
        "train_images": root / "images" / "train",
        "val_ann": root / "val.json",
        "val_images": root / "images" / "val",
    }
