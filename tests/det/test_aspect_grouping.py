"""``data.aspect_ratio_grouping``: train batches hold images of one aspect-ratio bin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from e2ekit.core.config import load_config
from e2ekit.core.engine.sampler import ResumableBatchSampler
from e2ekit.det.config import DetConfig
from e2ekit.det.task import DetTask, aspect_ratio_groups

from ..conftest import ROOT

TINY = ROOT / "configs" / "det" / "tiny.yaml"


def test_bins_follow_torchvision_grouping() -> None:
    # edges 2^(-1 .. 1 in 7 steps): 0.5, 0.63, 0.79, 1, 1.26, 1.59, 2
    assert aspect_ratio_groups([0.3, 0.6, 0.7, 0.9, 1.0, 1.5, 1.9, 3.0]) == [0, 1, 2, 3, 4, 5, 6, 7]


def _coco(root: Path, sizes: list[tuple[int, int]]) -> Path:
    images, anns = [], []
    for i, (w, h) in enumerate(sizes, 1):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [2, 2, 8, 8],
                "area": 64,
                "iscrowd": 0,
            }
        )
    path = root / "train.json"
    categories = [{"id": 1, "name": "thing"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def _task(root: Path, *overrides: str) -> DetTask:
    ann = _coco(root, [(64, 32) if i % 3 else (32, 64) for i in range(96)])
    data = [f"data.{s}_ann={ann}" for s in ("train", "val")]
    data += [f"data.{s}_images={root}" for s in ("train", "val")]
    cfg = load_config(TINY, DetConfig, [*data, *[f"data.{o}" for o in overrides]])
    return DetTask(cfg)


def _batches(task: DetTask) -> list[list[int]]:
    ds = task.build_dataset("train")
    assert ds is not None
    sampler = ResumableBatchSampler(
        len(ds), 8, seed=0, lengths=task.sample_lengths(ds), bucket=task.bucket
    )
    return [[i for _, i in batch] for batch in sampler]


def test_grouped_batches_hold_one_aspect_ratio(tmp_path: Path) -> None:
    task = _task(tmp_path, "aspect_ratio_grouping=true")
    ds = task.build_dataset("train")
    groups = task.sample_lengths(ds)
    assert groups is not None and set(groups) == {1, 7}  # 1:2 -> bin 1, 2:1 -> bin 7
    batches = _batches(task)
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    # 96 images, windows of 20 batches of 8: one window, at most one batch straddles the bins
    assert len(mixed) <= 1 and len(batches) == 12
    assert sorted(i for b in batches for i in b) == list(range(96))  # every image once


def test_without_grouping_batches_mix(tmp_path: Path) -> None:
    task = _task(tmp_path, "aspect_ratio_grouping=false")
    assert task.sample_lengths(task.build_dataset("train")) is None and task.bucket == 0
    ratios = [64 / 32 if i % 3 else 32 / 64 for i in range(96)]
    mixed = [b for b in _batches(task) if len({ratios[i] for i in b}) > 1]
    assert len(mixed) > 6  # random batches of 8 from a 2:1 mix are nearly all mixed
