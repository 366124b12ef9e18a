"""Det data: the built-in synthetic COCO set (determinism, sanity, caching)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.det.data import SHAPES, builtin_coco, builtin_paths, read_coco, validate
from e2ekit.det.data.synthetic import make_synthetic_coco, render_sample

SMALL = {"num_train": 40, "num_val": 4, "size": 96, "seed": 3}


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", {**SMALL, "num_train": 8})
    b = make_synthetic_coco(tmp_path / "b", {**SMALL, "num_train": 8})
    c = make_synthetic_coco(tmp_path / "c", {**SMALL, "num_train": 8, "seed": 4})
    assert a["train_ann"].read_bytes() == b["train_ann"].read_bytes()
    assert a["val_ann"].read_bytes() == b["val_ann"].read_bytes()
    img = "000005.jpg"
    assert (a["train_images"] / img).read_bytes() == (b["train_images"] / img).read_bytes()
    assert a["train_ann"].read_bytes() != c["train_ann"].read_bytes()


def test_boxes_are_valid_tight_and_span_classes_and_sizes(tmp_path: Path) -> None:
    paths = make_synthetic_coco(tmp_path, SMALL)
    ds = read_coco(paths["train_ann"], paths["train_images"])
    assert len(ds) == 40 and ds.class_names == list(SHAPES[:4])
    _, report = validate(ds)  # files exist, boxes inside, no clipping needed
    assert report.ok and report.counts["clipped"] == 0
    assert all(c > 0 for c in ds.class_counts())
    assert all(r.num_boxes >= 1 and (r.width, r.height) == (96, 96) for r in ds.records)
    boxes = np.concatenate([r.boxes for r in ds.records])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 96
    assert side.min() < 0.12 and side.max() > 0.4  # small and large objects
    val = read_coco(paths["val_ann"], paths["val_images"])
    assert len(val) == 4 and val.records[0].file.parent.name == "val"


def test_render_sample_box_is_tight_to_drawn_pixels() -> None:
    rng = np.random.default_rng(0)
    image, boxes, labels = render_sample(rng, (64, 80), num_classes=5, max_objects=1)
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    assert boxes.shape == (1, 4) and labels.tolist() == [0]
    x1, y1, x2, y2 = boxes[0].astype(int)
    assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 64


def test_builtin_coco_is_cached_and_checked() -> None:
    root = builtin_coco({"num_train": 3, "num_val": 2, "size": 64})
    meta = root / "meta.json"
    stamp = meta.stat().st_mtime_ns
    assert builtin_coco({"num_train": 3, "num_val": 2, "size": [64, 64]}) == root
    assert meta.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in root.parent.iterdir() if p.name.endswith(".tmp")]
    paths = builtin_paths({"num_train": 3, "num_val": 2, "size": 64})
    assert paths["train_ann"] == root / "train.json" and paths["val_images"].is_dir()
    assert len(read_coco(paths["train_ann"], paths["train_images"])) == 3
    with pytest.raises(ConfigError, match="no parameter colour"):
        builtin_coco({"colour": 1})
    with pytest.raises(ConfigError, match=r"num_classes must be 1\.\.5"):
        builtin_coco({"num_classes": 9})
