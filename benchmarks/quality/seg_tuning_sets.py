"""The generated sets seg quick was tuned on, so its header's numbers can be reproduced.

None of them is a quality-benchmark set (those are ``../shared/data`` samples and ``_seg``'s
blobs, other seeds and styles): a config is never tuned on the data it is measured on.

- ``strokes`` (seed 99173): 256 px grey images, 4 classes: wandering strokes 2-4 px wide,
  rings, filled stars on striped noise; 200 train / 40 val.
- ``em`` (seed 4242): EM-like 512 px grey images of warped Voronoi cells; the dark walls,
  2-9 px wide and fading in places, are class 0, the textured interiors with dark blobs
  class 1; 10 train / 6 val.
- ``street`` (seed 7311): 240x320 colour street-like scenes (sky, building, road,
  vegetation, car), the training images under dim warm dusk light, the validation images
  under daylight: a lighting shift between the splits; 8 train / 6 val.

Each writes ``img/``, ``lab/``, ``train.txt`` and ``val.txt`` (PaddleSeg lists) under
``--out``; train on it with ``-o data.root=OUT -o data.train_list=train.txt -o
data.val_list=val.txt -o data.num_classes=K -o data.class_names=null``.

    python benchmarks/quality/seg_tuning_sets.py em --out /tmp/em
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _write_split(root: Path, split: str, names: list[str]) -> None:
    (root / f"{split}.txt").write_text("".join(f"img/{n} lab/{n}\n" for n in names))


def _dirs(root: Path) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "lab").mkdir(exist_ok=True)


def strokes(root: Path) -> int:
    """Thin strokes, rings and stars on striped noise; returns the class count."""
    rng = np.random.default_rng(99173)
    _dirs(root)
    size = 256
    for split, n in (("train", 200), ("val", 40)):
        names = []
        for i in range(n):
            xs = np.linspace(0, rng.uniform(6, 30), size)
            stripes = np.sin(xs)[None, :] * rng.uniform(10, 40) + rng.uniform(60, 190)
            bg = stripes.repeat(size, 0)
            coarse = rng.uniform(0, 255, (size // 8, size // 8)).astype(np.uint8)
            noise = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
            bg = bg + np.asarray(noise, np.float32) * 0.3
            img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
            lab = Image.new("L", (size, size), 0)
            di, dl = ImageDraw.Draw(img), ImageDraw.Draw(lab)
            for _ in range(int(rng.integers(3, 8))):
                c = int(rng.integers(1, 4))
                g = int(rng.uniform(0, 255))
                cx, cy = rng.uniform(0, size, 2)
                r = rng.uniform(12, 45)
                if c == 1:  # a wandering stroke, 2-4 px wide
                    pts = [(cx, cy)]
                    a = rng.uniform(0, 2 * np.pi)
                    for _ in range(int(rng.integers(6, 14))):
                        a += rng.normal(0, 0.5)
                        cx += 12 * np.cos(a)
                        cy += 12 * np.sin(a)
                        pts.append((cx, cy))
                    w = int(rng.integers(2, 5))
                    di.line(pts, fill=g, width=w)
                    dl.line(pts, fill=1, width=w)
                elif c == 2:  # ring
                    w = int(rng.integers(3, 8))
                    box = [cx - r, cy - r, cx + r, cy + r]
                    di.ellipse(box, outline=g, width=w)
                    dl.ellipse(box, outline=2, width=w)
                else:  # star
                    k = int(rng.integers(4, 7))
                    t0 = rng.uniform(0, np.pi)
                    pts = []
                    for j in range(2 * k):
                        rad = r if j % 2 == 0 else r * 0.45
                        t = t0 + j * np.pi / k
                        pts.append((cx + rad * np.cos(t), cy + rad * np.sin(t)))
                    di.polygon(pts, fill=g)
                    dl.polygon(pts, fill=3)
            img = img.filter(ImageFilter.GaussianBlur(0.7))
            arr = np.asarray(img, np.float32) + rng.normal(0, 10, (size, size))
            name = f"{split}_{i:04d}.png"
            rgb = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert("RGB")
            rgb.save(root / "img" / name)
            lab.save(root / "lab" / name)
            names.append(name)
        _write_split(root, split, names)
    return 4


def em(root: Path) -> int:
    """Warped Voronoi cells with thin fading walls (EM-like); returns the class count."""
    rng = np.random.default_rng(4242)
    _dirs(root)
    size = 512
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def smooth(scale: int, amp: float) -> np.ndarray:
        n = max(2, size // scale)
        f = rng.normal(0, 1, (n, n)).astype(np.float32)
        return np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC), np.float32) * amp

    for split, n in (("train", 10), ("val", 6)):
        names = []
        for i in range(n):
            k = int(rng.integers(25, 70))
            seeds = rng.uniform(-20, size + 20, (k, 2)).astype(np.float32)
            wx, wy = xx + smooth(64, 10), yy + smooth(64, 10)
            d = np.sqrt(
                (wx[None] - seeds[:, 0, None, None]) ** 2
                + (wy[None] - seeds[:, 1, None, None]) ** 2
            )
            part = np.partition(d, 1, axis=0)
            gap = part[1] - part[0]  # grows about 2 px per px away from a wall
            width = rng.uniform(2, 9) + smooth(32, 1.5)
            wall = gap < width
            cell = np.argmin(d, axis=0)
            shade = rng.uniform(120, 200, k).astype(np.float32)[cell]
            img = shade + smooth(4, 12) + smooth(16, 10)
            blobs = np.zeros((size, size), bool)  # vesicle-like distractors inside cells
            for _ in range(int(rng.integers(5, 25))):
                cx, cy = rng.uniform(0, size, 2)
                a, b = rng.uniform(4, 22, 2)
                t = rng.uniform(0, np.pi)
                u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
                v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
                blobs |= (u * u + v * v < 1) & (gap > width)
            img = np.where(blobs, img * rng.uniform(0.35, 0.6), img)
            c = np.clip(0.65 + smooth(48, 0.35), 0.2, 1.0)  # wall contrast fades along walls
            img = np.where(wall, img * (1 - c) + c * (rng.uniform(25, 70) + smooth(8, 15)), img)
            blur = ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6))
            im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(blur)
            arr = np.asarray(im, np.float32) + rng.normal(0, 14, (size, size))
            name = f"{split}_{i:03d}.png"
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / "img" / name)
            Image.fromarray((~wall).astype(np.uint8)).save(root / "lab" / name)
            names.append(name)
        _write_split(root, split, names)
    return 2


def _street_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Image.Image]:
    img = Image.new("RGB", (w, h))
    lab = Image.new("L", (w, h), 0)
    di, dl = ImageDraw.Draw(img), ImageDraw.Draw(lab)

    def both(shape: str, xy: list, fill: tuple, cls: int, **kw: float) -> None:
        getattr(di, shape)(xy, fill=fill, **kw)
        getattr(dl, shape)(xy, fill=cls, **kw)

    horizon = int(rng.uniform(0.35, 0.55) * h)
    for y in range(h):  # sky gradient
        t = y / h
        di.line([(0, y), (w, y)], fill=(int(120 + 80 * t), int(160 + 60 * t), int(230 - 20 * t)))
    for _ in range(rng.integers(1, 4)):  # clouds (sky)
        cx, cy = rng.uniform(0, w), rng.uniform(0, horizon * 0.6)
        r = rng.uniform(10, 30)
        di.ellipse([cx - 2 * r, cy - r, cx + 2 * r, cy + r], fill=(235, 238, 242))
    x = -rng.uniform(0, 30)
    while x < w:  # buildings along the horizon, with a grid of windows
        bw = rng.uniform(35, 90)
        top = rng.uniform(0.08, 0.3) * h
        base = tuple(int(v) for v in rng.uniform([110, 90, 70], [190, 170, 160]))
        both("rectangle", [x, top, x + bw, horizon + 5], base, 1)
        win = tuple(int(v * 0.55) for v in base)
        for wy in np.arange(top + 6, horizon - 6, 12):
            for wx in np.arange(x + 5, x + bw - 6, 10):
                di.rectangle([wx, wy, wx + 5, wy + 6], fill=win)
        x += bw + rng.uniform(-5, 15)
    road_l, road_r = rng.uniform(0.3, 0.45) * w, rng.uniform(0.55, 0.7) * w
    road = [(road_l, horizon), (road_r, horizon), (w * 1.2, h), (-w * 0.2, h)]
    both("polygon", road, (95, 95, 100), 2)
    for verge in (
        [(0, horizon), (road_l, horizon), (-w * 0.2, h), (0, h)],
        [(road_r, horizon), (w, horizon), (w, h), (w * 1.2, h)],
    ):  # grass verges count as vegetation
        both("polygon", verge, (70, 120, 50), 3)
    mid = (road_l + road_r) / 2
    for k in range(6):  # lane marks (road)
        y0 = horizon + (h - horizon) * k / 6
        y1 = y0 + (h - horizon) / 12
        di.line([(mid, y0), (mid, y1)], fill=(220, 220, 210), width=max(1, int(1 + 4 * k / 6)))
    for _ in range(rng.integers(2, 6)):  # trees beside the road
        cx = rng.choice([rng.uniform(0, road_l), rng.uniform(road_r, w)])
        cy = horizon - rng.uniform(0, 25)
        r = rng.uniform(15, 35)
        both("rectangle", [cx - 3, cy, cx + 3, cy + r], (80, 60, 40), 3)
        both("ellipse", [cx - r, cy - 1.6 * r, cx + r, cy + 0.3 * r], (50, 110, 40), 3)
    for _ in range(rng.integers(1, 4)):  # cars on the road, larger when nearer
        t = rng.uniform(0.15, 0.8)
        y = horizon + t * (h - horizon)
        s = 10 + 50 * t
        cx = rng.uniform(road_l - 20 + (1 - t) * 20, road_r + 20 - (1 - t) * 20)
        col = tuple(int(v) for v in rng.integers(20, 235, 3))
        both("rounded_rectangle", [cx - s, y - 0.6 * s, cx + s, y], col, 4, radius=s * 0.2)
        di.rectangle([cx - 0.6 * s, y - 0.55 * s, cx + 0.6 * s, y - 0.35 * s], fill=(40, 50, 60))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6))).astype(np.float32)
    grain = rng.normal(0, 10, (h, w, 1)) * (np.asarray(lab)[..., None] >= 2)  # road, grass, cars
    arr += grain + rng.normal(0, 4, (h, w, 3))
    return arr, lab


def street(root: Path) -> int:
    """Street-like scenes, dusk light in train and daylight in val; returns the class count."""
    rng = np.random.default_rng(7311)
    _dirs(root)
    for split, n in (("train", 8), ("val", 6)):
        names = []
        for i in range(n):
            arr, lab = _street_scene(rng, 240, 320)
            if split == "train":  # dusk: dark, warm, flat
                gain, cast, gamma = rng.uniform(0.4, 0.6), (1.15, 0.85, 0.6), rng.uniform(1.2, 1.4)
            else:  # daylight: bright, slightly cool
                gain, cast, gamma = rng.uniform(0.95, 1.1), (0.95, 1.0, 1.05), rng.uniform(0.9, 1.0)
            lit = (arr.clip(0, 255) / 255.0) ** gamma * gain * np.array(cast)
            name = f"{split}_{i:03d}.png"
            Image.fromarray((lit.clip(0, 1) * 255).astype(np.uint8)).save(root / "img" / name)
            lab.save(root / "lab" / name)
            names.append(name)
        _write_split(root, split, names)
    return 5


SETS: dict[str, Callable[[Path], int]] = {"strokes": strokes, "em": em, "street": street}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("name", choices=sorted(SETS))
    ap.add_argument("--out", type=Path, required=True, help="folder to write the set into")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {args.out} is not empty; give a new folder (a set is never mixed in)")
    k = SETS[args.name](args.out)
    print(f"{args.name}: {k} classes, lists {args.out / 'train.txt'} and {args.out / 'val.txt'}")


if __name__ == "__main__":
    main()
