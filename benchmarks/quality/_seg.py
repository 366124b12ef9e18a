"""Segmentation: ours (``e2ekit seg train -c quick``) vs segmentation_models_pytorch U-Net
ResNet-18 (no pretrained weights) in a plain PyTorch loop; mIoU from both sides' predicted
label PNGs at the original label resolution, computed here the same way for both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    SHARED_DATA,
    Budget,
    log,
    over_seeds,
    result_line,
    run_cli,
    run_ours,
    run_peer,
)
from PIL import Image, ImageDraw, ImageFilter

DATASETS = ("camvid_mini", "membrane", "blobs")
IGNORE = 255


def _write_list(path: Path, pairs: list[tuple[Path, Path]]) -> Path:
    path.write_text("".join(f"{i} {lab}\n" for i, lab in pairs))
    return path


def _blobs(root: Path, n_train: int = 240, n_test: int = 40, size: int = 160) -> dict:
    """Generated data unlike the kit's built-in shapes: soft ellipses, irregular polygons
    and thin bars (classes 1-3) on smooth noise backgrounds, with a pastel palette shared
    by all classes, blur and grain; seed 20261204, PaddleSeg-style lists."""
    rng = np.random.default_rng(20261204)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    palette = rng.uniform(90, 230, size=(24, 3))
    pairs: dict[str, list[tuple[Path, Path]]] = {"train": [], "test": []}
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            coarse = rng.uniform(0, 255, size=(size // 16, size // 16, 3)).astype(np.uint8)
            bg = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
            label = Image.new("L", (size, size), 0)
            img_draw, lab_draw = ImageDraw.Draw(bg), ImageDraw.Draw(label)
            for _ in range(int(rng.integers(2, 6))):
                cls = int(rng.integers(1, 4))
                color = tuple(int(c) for c in palette[rng.integers(len(palette))])
                cx, cy = rng.uniform(0, size, 2)
                r = rng.uniform(size * 0.08, size * 0.22)
                if cls == 1:
                    e = rng.uniform(0.5, 1.0)
                    box = [cx - r, cy - r * e, cx + r, cy + r * e]
                    img_draw.ellipse(box, fill=color)
                    lab_draw.ellipse(box, fill=cls)
                elif cls == 2:
                    k = int(rng.integers(5, 8))
                    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
                    rad = r * rng.uniform(0.6, 1.1, k)
                    pts = [
                        (cx + a * np.cos(t), cy + a * np.sin(t))
                        for t, a in zip(ang, rad, strict=True)
                    ]
                    img_draw.polygon(pts, fill=color)
                    lab_draw.polygon(pts, fill=cls)
                else:
                    t = rng.uniform(0, np.pi)
                    dx, dy = np.cos(t) * r * 1.5, np.sin(t) * r * 1.5
                    line = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
                    width = int(rng.integers(4, 9))
                    img_draw.line(line, fill=color, width=width)
                    lab_draw.line(line, fill=cls, width=width)
            bg = bg.filter(ImageFilter.GaussianBlur(0.8))
            arr = np.asarray(bg).astype(np.float32) + rng.normal(0, 12, (size, size, 3))
            stem = f"{split}_{i:04d}.png"
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / "images" / stem)
            label.save(root / "labels" / stem)
            pairs[split].append((root / "images" / stem, root / "labels" / stem))
    return {"pairs": pairs, "num_classes": 4, "binary": False}


def prepare(name: str, work: Path) -> dict[str, Any]:
    """Train/test pairs, class count and list files of one data set."""
    work.mkdir(parents=True, exist_ok=True)
    if name == "camvid_mini":
        root = SHARED_DATA / "seg" / "camvid_mini"
        pairs = {
            split: [
                (p, root / f"annotations_prepped_{split}" / p.name)
                for p in sorted((root / f"images_prepped_{split}").glob("*.png"))
            ]
            for split in ("train", "test")
        }
        d = {"pairs": pairs, "num_classes": 12, "binary": False}
    elif name == "membrane":
        root = SHARED_DATA / "seg" / "membrane" / "train"
        names = sorted(p.name for p in (root / "image").glob("*.png"))
        both = [(root / "image" / n, root / "label" / n) for n in names]
        d = {"pairs": {"train": both[:10], "test": both[10:]}, "num_classes": 2, "binary": True}
    elif name == "blobs":
        d = _blobs(work / "blobs")
    else:
        raise SystemExit(f"unknown seg data {name!r}; choose from {', '.join(DATASETS)}")
    d["train_list"] = _write_list(work / "train.txt", d["pairs"]["train"])
    d["test_list"] = _write_list(work / "test.txt", d["pairs"]["test"])
    (work / "test_images.txt").write_text("".join(f"{i}\n" for i, _ in d["pairs"]["test"]))
    return d


def _gt(path: Path, binary: bool) -> np.ndarray:
    lab = np.array(Image.open(path))
    if binary:
        lab = np.where(lab == 255, 1, lab)
    return lab


def miou(pred_dir: Path, pairs: list[tuple[Path, Path]], k: int, binary: bool) -> dict:
    """mIoU over the test set (one confusion matrix), at each label's own resolution."""
    conf = np.zeros((k, k), np.int64)
    for img, lab in pairs:
        gt = _gt(lab, binary)
        pred = np.array(Image.open(pred_dir / f"{img.stem}.png"))
        if pred.shape != gt.shape:
            raise RuntimeError(f"{img.stem}: prediction {pred.shape} vs label {gt.shape}")
        keep = gt != IGNORE
        conf += np.bincount(
            gt[keep].astype(np.int64) * k + pred[keep].astype(np.int64), minlength=k * k
        ).reshape(k, k)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = inter[present] / union[present]
    return {"mIoU": round(float(iou.mean()), 4), "acc": round(float(inter.sum() / conf.sum()), 4)}


def run(name: str, work: Path, budget: Budget, peer_py: Path, mach: dict, args: Any) -> dict:
    log(f"seg/{name}: preparing data")
    d = prepare(name, work / "data")
    ours, peer, seeds = over_seeds(
        f"seg/{name}",
        "smp U-Net ResNet-18",
        "mIoU",
        args.seg_seeds,
        lambda sub, seed: _ours_once(name, d, work, work / sub, seed, budget, args),
        lambda sub, seed: _peer_once(d, work / sub, seed, budget, peer_py),
    )
    line = result_line("seg", name, "mIoU", ours, peer, mach, budget)
    line["seeds"] = seeds
    return line


def _batch(d: dict) -> int:
    return min(16, max(2, len(d["pairs"]["train"]) // 2))


def _ours_once(
    name: str, d: dict, work: Path, out: Path, seed: int, budget: Budget, args: Any
) -> dict:
    k, binary, batch = d["num_classes"], d["binary"], _batch(d)
    overrides = [
        f"data.root={work / 'data'}",
        f"data.train_list={d['train_list']}",
        "data.val_list=null",  # scored afterwards from predictions, as the peer is
        f"data.num_classes={k}",
        "data.class_names=null",
        f"data.binary_255_to_1={str(binary).lower()}",
        f"train.batch_size={batch}",
        f"train.eval_batch_size={batch}",
        f"seed={seed}",
    ]
    log(f"seg/{name}: {len(d['pairs']['train'])} train images, batch {batch}")
    ours = run_ours("seg", args.seg_config, overrides, out, budget, batch, 8)
    pred_dir = out / "pred"
    t = run_cli(
        [
            "seg",
            "predict",
            "--weights",
            ours["run_dir"],
            "--input",
            str(work / "data" / "test_images.txt"),
            "--out",
            str(pred_dir),
            "--threads",
            str(budget.threads),
        ],
        out / "predict.log",
        budget,
    )
    t0 = time.perf_counter()
    ours.update(miou(pred_dir / "label", d["pairs"]["test"], k, binary))
    ours["eval_wall_s"] = round(t + time.perf_counter() - t0, 1)
    ours["wall_s"] = round(ours["train_wall_s"] + ours["eval_wall_s"], 1)
    return ours


def _peer_once(d: dict, out: Path, seed: int, budget: Budget, peer_py: Path) -> dict:
    spec = {
        "train": [[str(i), str(lab)] for i, lab in d["pairs"]["train"]],
        "test": [str(i) for i, _ in d["pairs"]["test"]],
        "num_classes": d["num_classes"],
        "binary": d["binary"],
        "batch_size": _batch(d),
        "budget_s": budget.seconds,
        "threads": budget.threads,
        "pred_dir": str(out / "pred"),
        "seed": seed,
    }
    peer = run_peer(peer_py, "_peer_seg.py", spec, out, budget)
    t0 = time.perf_counter()
    peer.update(miou(out / "pred", d["pairs"]["test"], d["num_classes"], d["binary"]))
    peer["eval_wall_s"] = round(peer["predict_wall_s"] + time.perf_counter() - t0, 1)
    peer["wall_s"] = round(peer["train_wall_s"] + peer["eval_wall_s"], 1)
    return peer
