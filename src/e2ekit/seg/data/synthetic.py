"""A built-in synthetic segmentation dataset of textured shapes (``data.root: builtin:shapes``).

Each image holds a few filled shapes on a textured background; the class of a
pixel is the kind of shape covering it (0 = background). Textures are shared by
all classes and each class's hue band overlaps its neighbours' (``hue_overlap``),
so colour only narrows the choice and shape has to settle the rest (with
``hue_overlap >= num_classes - 2`` colour says nothing at all). Shapes overlap
and occlude each other, run off the image edges, and the image gets Gaussian
noise. Generation is vectorised numpy (one full-image mask per shape) and
deterministic per (seed, split, index).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.cache import cached_folder
from e2ekit.core.errors import ConfigError
from e2ekit.core.imageio import encode_png
from e2ekit.core.paths import data_cache_dir

__all__ = ["SHAPE_KINDS", "builtin_root", "data_cache_dir", "make_synthetic", "render_sample"]

# Bump when the generator's output changes, so cached copies are rebuilt.
GENERATOR_VERSION = 1

SHAPE_KINDS = ("circle", "rectangle", "triangle", "ring", "cross", "star")

DEFAULTS: dict[str, Any] = {
    "name": "shapes",
    "num_train": 1000,
    "num_val": 100,
    "size": [128, 128],
    "num_classes": 4,
    "seed": 0,
    "hue_overlap": 0.2,
}

_SPLIT_CODE = {"train": 1, "val": 2}


def _pattern(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A texture in [0, 1] over the image: flat, stripes, checker or blotchy noise."""
    h, w = yy.shape
    kind = rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])
    if kind == 0:
        return np.zeros((h, w), np.float32)
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        return (np.sin(phase) > 0).astype(np.float32)
    if kind == 2:
        cell = rng.uniform(3, 10)
        return ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    block = int(rng.integers(2, 6))
    small = rng.random((h // block + 1, w // block + 1), dtype=np.float32)
    return np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]


def _paint(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    base: np.ndarray,
    spread: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Colours (H, W, 3), or (N, 3) for ``mask``'s pixels: ``base`` textured with a jittered
    second colour."""
    second = np.clip(base + rng.normal(0, spread, 3), 0, 255).astype(np.float32)
    p = _pattern(rng, yy, xx)
    p = (p if mask is None else p[mask])[..., None]  # (H, W, 1) or (N, 1)
    return base.astype(np.float32) * (1.0 - p) + second * p


def _shape_mask(
    kind: str,
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    r: float,
) -> np.ndarray:
    """A boolean (H, W) mask of one shape of ``kind`` centred at (cy, cx), size ~r."""
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)  # rotated coordinates
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == "circle":
        a = rng.uniform(0.9, 1.1)
        return (u / a) ** 2 + (v * a) ** 2 <= r * r
    if kind == "rectangle":
        a = np.sqrt(rng.uniform(0.45, 2.2))
        s = r * 0.85
        return (np.abs(u) <= s * a) & (np.abs(v) <= s / a)
    if kind == "triangle":
        angles = theta + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        radii = r * rng.uniform(1.25, 1.5, 3)  # equal area to the other kinds
        py, px = cy + radii * np.sin(angles), cx + radii * np.cos(angles)  # CCW vertices
        mask = np.ones(yy.shape, bool)
        for k in range(3):
            j = (k + 1) % 3
            mask &= (px[j] - px[k]) * (yy - py[k]) - (py[j] - py[k]) * (xx - px[k]) >= 0
        return mask
    if kind == "ring":
        d2 = u * u + v * v
        inner = r * rng.uniform(0.45, 0.65)
        return (d2 <= r * r) & (d2 >= inner * inner)
    if kind == "cross":
        arm = r * rng.uniform(0.25, 0.38)
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= arm)) | ((av <= r) & (au <= arm))
    if kind == "star":
        spikes = 5
        inner = r * rng.uniform(0.4, 0.5)
        t = (np.arctan2(v, u) * (spikes / (2 * np.pi))) % 1.0
        reach = inner + (r * 1.15 - inner) * (1.0 - 2.0 * np.abs(t - 0.5))
        return u * u + v * v <= reach * reach
    raise ValueError(f"unknown shape kind {kind}")


def _class_colour(
    rng: np.random.Generator, cls: int, num_classes: int, hue_overlap: float
) -> np.ndarray:
    """An RGB colour whose hue leans to the class but overlaps its neighbours' hues.

    Each class draws its hue from a band ``1 + hue_overlap`` times the spacing
    between class centres, so band edges are shared with the neighbouring classes
    (and a texture's second colour strays further): colour narrows the choice,
    shape has to settle it. ``hue_overlap >= num_classes - 2`` removes the colour
    cue entirely (every class spans every hue).
    """
    spacing = 1.0 / (num_classes - 1)
    half = 0.5 * (1.0 + hue_overlap) * spacing
    hue = ((cls - 1) * spacing + rng.uniform(-half, half)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0))
    return np.array(rgb) * 255.0


def render_sample(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_classes: int,
    first_class: int = 1,
    hue_overlap: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 label of shape kinds."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres
    scale = min(h, w)
    bg = rng.uniform(0, 255, 3)
    image = _paint(rng, yy, xx, bg, spread=35.0)
    label = np.zeros((h, w), np.uint8)
    placed: list[tuple[float, float, float]] = []
    for j in range(int(rng.integers(3, 7))):
        cls = first_class if j == 0 else int(rng.integers(1, num_classes))
        r = scale * rng.uniform(0.11, 0.24)
        for _ in range(8):  # mostly apart, sometimes overlapping (occlusion)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            if rng.random() < 0.15 or all(
                np.hypot(cy - py, cx - px) > 0.9 * (r + pr) for py, px, pr in placed
            ):
                break
        placed.append((cy, cx, r))
        mask = _shape_mask(SHAPE_KINDS[cls - 1], rng, yy, xx, cy, cx, r)
        for _ in range(8):  # a colour that stands out from the background
            colour = _class_colour(rng, cls, num_classes, hue_overlap)
            if np.abs(colour - bg).mean() > 55:
                break
        image[mask] = _paint(rng, yy, xx, colour, spread=45.0, mask=mask)
        label[mask] = cls
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(3.0, 12.0)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def _check(num_classes: int, size: Any) -> tuple[int, int]:
    if not 2 <= int(num_classes) <= len(SHAPE_KINDS) + 1:
        raise ConfigError(
            f"builtin shapes support num_classes 2..{len(SHAPE_KINDS) + 1} "
            f"(background + {', '.join(SHAPE_KINDS)}), got {num_classes}"
        )
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 16:
        raise ConfigError(f"builtin shapes size must be (H, W) with both >= 16, got {size}")
    return hw[0], hw[1]


def make_synthetic(
    root: str | Path,
    num_train: int = 1000,
    num_val: int = 100,
    size: tuple[int, int] | int = (128, 128),
    num_classes: int = 4,
    seed: int = 0,
    hue_overlap: float = 0.2,
) -> dict[str, Any]:
    """Write ``images/``, ``labels/``, ``train.txt``, ``val.txt``, ``meta.json`` under ``root``.

    Returns ``{"root", "images", "labels", "train", "val", "meta"}`` (paths) and
    ``num_classes``/``class_names``. The same arguments give identical bytes.
    """
    h, w = _check(num_classes, size)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lists: dict[str, Path] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for i in range(int(count)):
            rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], i])
            image, label = render_sample(
                rng, (h, w), num_classes, 1 + i % (num_classes - 1), hue_overlap
            )
            stem = f"{split}_{i:05d}.png"
            (root / "images" / stem).write_bytes(encode_png(image, compress_level=1))
            (root / "labels" / stem).write_bytes(encode_png(label))
            lines.append(f"images/{stem} labels/{stem}\n")
        lists[split] = root / f"{split}.txt"
        lists[split].write_text("".join(lines), encoding="utf-8")
    class_names = ["background", *SHAPE_KINDS[: num_classes - 1]]
    meta = {
        "name": "shapes",
        "num_classes": num_classes,
        "class_names": class_names,
        "size": [h, w],
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "hue_overlap": float(hue_overlap),
        "generator_version": GENERATOR_VERSION,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {
        "root": root,
        "images": root / "images",
        "labels": root / "labels",
        "train": lists["train"],
        "val": lists["val"],
        "meta": root / "meta.json",
        "num_classes": num_classes,
        "class_names": class_names,
    }


def builtin_root(params: dict[str, Any] | None = None) -> Path:
    """The folder of a built-in dataset, generated once per distinct params and reused.

    The folder is named by a short hash of the full params and published whole
    (:func:`e2ekit.core.cache.cached_folder`), so a reader never sees a half-written
    dataset and two processes racing to build it both end up using one copy.
    """
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"builtin dataset has no parameter {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}"
        )
    full = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if full["name"] != "shapes":
        raise ConfigError(f"unknown builtin dataset '{full['name']}'; available: shapes")
    h, w = _check(full["num_classes"], full["size"])
    full.update(
        size=[h, w],
        num_train=int(full["num_train"]),
        num_val=int(full["num_val"]),
        num_classes=int(full["num_classes"]),
        seed=int(full["seed"]),
        hue_overlap=float(full["hue_overlap"]),
    )
    return cached_folder(
        data_cache_dir(),
        full["name"],
        {**full, "generator_version": GENERATOR_VERSION},
        lambda folder: make_synthetic(
            folder,
            num_train=full["num_train"],
            num_val=full["num_val"],
            size=(h, w),
            num_classes=full["num_classes"],
            seed=full["seed"],
            hue_overlap=full["hue_overlap"],
        ),
    )
