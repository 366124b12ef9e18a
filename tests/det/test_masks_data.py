"""Instance masks on the det data side: COCO polygons and RLE decode to the right pixels,
every geometric transform moves masks with their boxes, crop and mosaic drop masks with
their boxes, labelme/VIA polygons convert to COCO segmentations, malformed segmentations
name their annotation, and box-only data is exactly what it was."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from e2ekit.core.errors import DataError
from e2ekit.det.data import (
    RecordSamples,
    labelme_to_coco,
    load_sample,
    read_coco,
    validate,
    via_to_coco,
)
from e2ekit.det.data import transforms as T

from .test_data_convert import _labelme, _shape
from .test_transforms import BOXES, H, W, check_aligned, decode, make_sample, run

IH, IW = 16, 20  # the hand-made COCO image: height, width


def _png(path: Path, w: int = IW, h: int = IH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _rect(y1: int, y2: int, x1: int, x2: int, h: int = IH, w: int = IW) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def _uncompressed(m: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE by hand: run lengths of the column-major pixels, 0s first."""
    flat = m.flatten(order="F").tolist()
    counts, value, run_len = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run_len)
            value, run_len = v, 0
        run_len += 1
    counts.append(run_len)
    return {"size": [m.shape[0], m.shape[1]], "counts": counts}


POLY = _rect(3, 9, 2, 10)  # the polygon below: x 2..10, y 3..9 (pixel edges)
UNCOMPRESSED = _rect(1, 4, 12, 15)
COMPRESSED = _rect(10, 15, 4, 18)
CROWD = _rect(0, 2, 0, 5)


def _coco(tmp_path: Path, anns: list[dict[str, Any]]) -> Path:
    _png(tmp_path / "img" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": IW, "height": IH}],
        "annotations": [
            {"id": 10 + i, "image_id": 1, "category_id": 1, "iscrowd": 0, **a}
            for i, a in enumerate(anns)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _mask_anns() -> list[dict[str, Any]]:
    compressed = mask_utils.encode(np.asfortranarray(COMPRESSED))
    return [
        {"bbox": [2, 3, 8, 6], "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]]},
        {"bbox": [12, 1, 3, 3], "segmentation": _uncompressed(UNCOMPRESSED)},
        {
            "bbox": [4, 10, 14, 5],
            "segmentation": {"size": [IH, IW], "counts": compressed["counts"].decode()},
        },
        {"bbox": [0, 0, 5, 2], "segmentation": _uncompressed(CROWD), "iscrowd": 1},
        {"bbox": [15, 5, 3, 4]},  # box only: its mask is its rectangle
    ]


def test_polygon_and_both_rle_forms_decode_to_the_right_pixels(tmp_path: Path) -> None:
    assert _uncompressed(UNCOMPRESSED)["counts"][:2] == [12 * IH + 1, 3]  # hand RLE sanity
    ds, report = validate(read_coco(_coco(tmp_path, _mask_anns()), tmp_path / "img", masks=True))
    assert report.ok
    (rec,) = ds.records
    assert rec.has_masks and isinstance(rec.segmentations[0][0], np.ndarray)  # compact
    written = [a.get("segmentation") for a in ds.to_coco()["annotations"]]
    assert written == [a.get("segmentation") for a in _mask_anns()]  # passed through as read
    masks = rec.decode_masks()
    assert masks.dtype == np.uint8 and masks.shape == (5, IH, IW)
    expected = [POLY, UNCOMPRESSED, COMPRESSED, CROWD, _rect(5, 9, 15, 18)]
    for got, want in zip(masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)

    sample = load_sample(rec, with_masks=True)  # crowd regions leave, with their masks
    assert sample["masks"].dtype == torch.uint8 and sample["masks"].shape == (4, IH, IW)
    np.testing.assert_array_equal(sample["masks"][3].numpy(), expected[4])
    assert sample["labels"].tolist() == [0, 0, 0, 0] and len(sample["boxes"]) == 4
    assert "masks" not in load_sample(rec)  # decoded only when asked
    assert "masks" in RecordSamples(ds, with_masks=True)[0]
    assert "masks" not in RecordSamples(ds)[0]


def test_box_only_data_gives_the_same_samples_as_before(tmp_path: Path) -> None:
    from e2ekit.det.task import RecordsDataset

    anns = [{"bbox": [2, 3, 8, 6]}, {"bbox": [12, 1, 3, 3], "segmentation": []}]
    ds, _ = validate(read_coco(_coco(tmp_path, anns), tmp_path / "img", masks=True))
    assert ds.records[0].segmentations is None and not ds.records[0].has_masks
    assert all("segmentation" not in a for a in ds.to_coco()["annotations"])
    before = RecordsDataset(ds)[0]
    for with_masks in (False, True):
        now = RecordSamples(ds, with_masks=with_masks)[0]
        assert sorted(now) == sorted(before)
        for key, value in before.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(now[key], value) and now[key].dtype == value.dtype, key
            else:
                assert now[key] == value, key
    _, targets = T.pad_collate([RecordSamples(ds)[0]])
    assert "masks" not in targets[0]


@pytest.mark.parametrize(
    ("seg", "pattern"),
    [
        ([[1, 1, 5, 1, 5, 5, 1]], r"odd number of coordinates \(7\).*\[x1, y1, x2, y2"),
        ([[1, 1, 5, 5]], r"polygon 0 has 2 point\(s\); a polygon is a list"),
        ({"size": [IW, IH], "counts": "abc"}, r"RLE size \[20, 16\] does not match .*16x20"),
        ({"size": [IH, IW], "counts": [3, 4]}, r"counts sum to 7, not height\*width = 320"),
    ],
)
def test_malformed_segmentation_names_the_annotation(
    tmp_path: Path, seg: Any, pattern: str, caplog: pytest.LogCaptureFixture
) -> None:
    anns = [{"bbox": [2, 3, 8, 6], "segmentation": [[2, 3, 10, 3, 10, 9]]}]
    anns.append({"bbox": [1, 1, 4, 4], "segmentation": seg})
    ds = read_coco(_coco(tmp_path, anns), tmp_path / "img", masks=True)
    with pytest.raises(DataError, match=r"ann\.json annotations\[1\]: box .*" + pattern) as err:
        validate(ds)
    assert "1 annotation(s) with a malformed segmentation" in str(err.value)
    assert "data.drop_invalid" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        cleaned, report = validate(ds, drop_invalid=True)
    assert report.counts["bad_segmentation"] == 1 and report.dropped_boxes == 1
    (rec,) = cleaned.records
    assert rec.num_boxes == 1 and rec.ref_ids.tolist() == [0] and len(rec.segmentations) == 1
    assert rec.decode_masks().sum() > 0
    assert "dropped 0 image(s) and 1 box(es)" in caplog.text


# ----------------------------------------------------------------------------- transforms


def masked(sample: dict) -> dict:
    """``sample`` plus one filled-rectangle mask per box (each box's painted rectangle)."""
    b = sample["boxes"].as_subclass(torch.Tensor).round().to(torch.int64).tolist()
    h, w = sample["image"].shape[-2:]
    masks = torch.zeros((len(b), h, w), dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(b):
        masks[i, y1:y2, x1:x2] = 1
    return {**sample, "masks": tv_tensors.Mask(masks)}


def check_masks(out: dict, min_side: float = 2.0) -> int:
    """Each mask's pixel bounding box equals its box within 1 px, and the mask lies on its
    label's colour (so masks stay paired with their boxes and labels); returns the count."""
    masks, boxes, labels = out["masks"], out["boxes"], out["labels"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
    assert masks.shape == (len(boxes), *out["image"].shape[-2:])
    index = decode(out["image"])
    checked = 0
    for m, box, label in zip(masks, boxes.tolist(), labels.tolist(), strict=True):
        if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(xs), (box, "empty mask")
        got = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert np.allclose(got, box, atol=1.0), (got, box)
        assert (index[m.bool()] == label + 1).float().mean() >= 0.75, (box, label)  # edge blur
        checked += 1
    return checked


GEOMETRIC = [
    {"type": "RandomFlip", "prob": 1.0},
    {"type": "Resize", "target_size": [64, 200], "keep_ratio": True},
    {"type": "Resize", "target_size": [80, 100], "keep_ratio": False, "interp": 2},
    {"type": "RandomResize", "target_size": [[64, 64], [120, 160]], "random_interp": True},
    {"type": "RandomResize", "target_size": [[60, 100], [100, 140]], "random_range": True},
    {"type": "RandomCrop"},
    {"type": "RandomCrop", "allow_no_crop": False, "scaling": [0.3, 0.6]},
    {"type": "RandomExpand", "prob": 1.0, "ratio": 3.0},
    {"type": "Pad", "size": [100, 140]},
    {"type": "Pad", "size_divisor": 50},
    {"type": "SanitizeBoxes"},
    {"type": "RandomDistort", "prob": 1.0},  # colour: masks untouched
]


@pytest.mark.parametrize("spec", GEOMETRIC, ids=lambda s: s["type"])
def test_geometric_transforms_move_masks_with_boxes(spec):
    t = T.build_transforms([spec])
    for seed in range(4):
        sample = masked(make_sample())
        out = run(t, sample, seed)
        assert check_masks(out) >= 1
        check_aligned(out)
        assert torch.equal(sample["masks"], masked(make_sample())["masks"])  # input untouched
    if spec["type"] == "RandomDistort":
        assert torch.equal(out["masks"], sample["masks"])


def test_random_crop_drops_masks_with_their_boxes():
    t = T.RandomCrop(allow_no_crop=False, scaling=[0.3, 0.5])
    dropped = 0
    for seed in range(10):
        out = run(t, masked(make_sample()), seed)
        assert len(out["masks"]) == len(out["boxes"]) == len(out["labels"])
        check_masks(out, min_side=1)
        dropped += len(out["boxes"]) < len(BOXES)
    assert dropped > 0


def test_mosaic_moves_and_drops_masks_with_boxes():
    t = T.Mosaic(target_size=160, min_box_size=2)
    dropped = 0
    for seed in range(6):
        others = [masked(make_sample()), masked(make_sample(h=80, w=60)), masked(make_sample())]
        out = run(t, masked(make_sample()), seed, sample_fn=iter(others).__next__)
        assert out["masks"].shape == (len(out["boxes"]), 160, 160)
        assert len(out["labels"]) == len(out["boxes"])
        assert check_masks(out) >= 1
        dropped += len(out["boxes"]) < 4 * len(BOXES)
    assert dropped > 0


def test_mixup_concatenates_masks_on_the_larger_canvas():
    a = masked(make_sample())
    b = masked(make_sample(boxes=[[5, 5, 40, 30]], labels=[2], h=64, w=160))
    out = run(T.Mixup(), a, 0, sample_fn=lambda: b)
    assert out["masks"].shape == (len(BOXES) + 1, H, 160)
    assert torch.equal(out["masks"][: len(BOXES), :, :W], a["masks"])
    assert int(out["masks"][: len(BOXES), :, W:].sum()) == 0
    assert torch.equal(out["masks"][-1, :64], b["masks"][0]) and out["masks"][-1, 64:].sum() == 0


def test_batch_resize_pad_and_collate_carry_masks():
    batch = [
        masked(make_sample()),
        masked(make_sample(h=50, w=70, boxes=[[5, 5, 30, 30]], labels=[1])),
    ]
    resize = T.BatchRandomResize(target_size=[64, 96, 128], keep_ratio=True)
    for seed in range(4):
        torch.manual_seed(seed)
        for s in T.PadBatch(pad_to_stride=32)(resize(batch)):
            assert check_masks(s) >= 1
    images, targets = T.pad_collate(batch, stride=32)
    assert images.shape[-2:] == (96, 128)
    for target, s in zip(targets, batch, strict=True):
        h, w = s["image"].shape[-2:]
        m = target["masks"]
        assert type(m) is torch.Tensor and m.dtype == torch.uint8 and m.shape[-2:] == (96, 128)
        assert torch.equal(m[:, :h, :w], s["masks"].as_subclass(torch.Tensor))
        assert m[:, h:].sum() == 0 and m[:, :, w:].sum() == 0


def test_masks_of_the_wrong_shape_are_refused():
    sample = make_sample()
    sample["masks"] = torch.zeros((2, H, W), dtype=torch.uint8)
    with pytest.raises(DataError, match=r"RandomFlip: 'masks' must be \(N, H, W\) = \(3, 96"):
        T.RandomFlip(prob=1.0)(sample)


# ----------------------------------------------------------------------------- converters


def test_labelme_polygons_convert_to_coco_segmentations(tmp_path: Path) -> None:
    _labelme(
        tmp_path,
        "a",
        [
            _shape("cat", [[10, 10], [30, 10], [30, 20], [10, 20]], "polygon"),
            _shape("dog", [[40, 5], [50, 15]]),  # a rectangle stays box-only
            _shape("cat", [[5, 25], [25, 25], [5, 35]], "polygon"),
        ],
    )
    out = labelme_to_coco(tmp_path, tmp_path / "coco.json")
    cat, dog, tri = json.loads(out.read_text())["annotations"]
    assert cat["segmentation"] == [[10, 10, 30, 10, 30, 20, 10, 20]]
    assert cat["bbox"] == [10, 10, 20, 10] and cat["area"] == 200
    assert "segmentation" not in dog and dog["area"] == 100
    assert tri["bbox"] == [5, 25, 20, 10] and 90 <= tri["area"] <= 110  # ~ half of 20x10
    ds = read_coco(out, tmp_path, masks=True)
    (rec,) = validate(ds)[0].records
    masks = rec.decode_masks()
    np.testing.assert_array_equal(masks[0], _rect(10, 20, 10, 30, 40, 60))
    np.testing.assert_array_equal(masks[1], _rect(5, 15, 40, 50, 40, 60))  # its rectangle
    assert masks[2].sum() == tri["area"]


def test_labelme_rectangles_only_give_box_only_coco(tmp_path: Path) -> None:
    _labelme(tmp_path, "a", [_shape("dog", [[40, 5], [50, 15]])])
    (ann,) = json.loads(labelme_to_coco(tmp_path, tmp_path / "c.json").read_text())["annotations"]
    assert ann == {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [40.0, 5.0, 10.0, 10.0],
        "area": 100.0,
        "iscrowd": 0,
    }


def _via_region(shape: dict[str, Any], label: str | None = "cat") -> dict[str, Any]:
    return {
        "shape_attributes": shape,
        "region_attributes": {} if label is None else {"label": label},
    }


def _via(folder: Path, project: bool = False) -> Path:
    _png(folder / "b.png", 60, 40)
    _png(folder / "a.png", 60, 40)
    meta = {
        "b.png1234": {
            "filename": "b.png",
            "size": 1234,
            "regions": [
                _via_region(
                    {
                        "name": "polygon",
                        "all_points_x": [10, 30, 30, 10],
                        "all_points_y": [10, 10, 20, 20],
                    }
                ),
                _via_region({"name": "rect", "x": 40, "y": 5, "width": 10, "height": 12}, "dog"),
                _via_region({"name": "point", "cx": 3, "cy": 3}),  # no area: skipped
            ],
            "file_attributes": {},
        },
        "a.png99": {"filename": "a.png", "size": 99, "regions": [], "file_attributes": {}},
    }
    path = folder / "via.json"
    path.write_text(
        json.dumps({"_via_settings": {}, "_via_img_metadata": meta} if project else meta)
    )
    return path


@pytest.mark.parametrize("project", [False, True], ids=["export", "project"])
def test_via_polygons_convert_to_coco(tmp_path: Path, project: bool) -> None:
    out = via_to_coco(_via(tmp_path, project), tmp_path / "coco.json")
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png"]  # sorted, ids 1..
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    poly, rect = coco["annotations"]
    assert poly["image_id"] == 2 and poly["segmentation"] == [[10, 10, 30, 10, 30, 20, 10, 20]]
    assert poly["bbox"] == [10, 10, 20, 10] and poly["area"] == 200
    assert rect["bbox"] == [40, 5, 10, 12] and rect["area"] == 120 and "segmentation" not in rect
    ds, report = validate(read_coco(out, tmp_path, masks=True))
    assert report.ok and ds.records[1].has_masks
    np.testing.assert_array_equal(ds.records[1].decode_masks()[0], _rect(10, 20, 10, 30, 40, 60))


def test_via_errors_name_the_region(tmp_path: Path) -> None:
    path = _via(tmp_path)
    meta = json.loads(path.read_text())
    meta["b.png1234"]["regions"][0]["region_attributes"] = {"kind": "cat", "colour": "red"}
    meta["b.png1234"]["regions"][1]["region_attributes"] = {"kind": "dog", "colour": "red"}
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"b\.png regions\[0\]: cannot tell the class attribute"):
        via_to_coco(path, tmp_path / "o.json")
    assert via_to_coco(path, tmp_path / "o.json", attribute="kind").is_file()
    meta["b.png1234"]["regions"][0]["shape_attributes"]["all_points_y"] = [10, 10]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"b\.png regions\[0\]: a polygon needs"):
        via_to_coco(path, tmp_path / "o.json", attribute="kind")


def test_convert_cli_from_via(cli, tmp_path: Path) -> None:
    code, out, err = cli(
        "det", "convert", "--from", "via", "--input", _via(tmp_path), "--out", tmp_path / "c.json"
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["images"] == 2 and result["annotations"] == 2
    assert result["categories"] == ["cat", "dog"]


def test_box_only_reading_neither_keeps_nor_checks_segmentations(tmp_path: Path) -> None:
    """A box-only run on a COCO file with (even malformed) masks behaves as before masks."""
    anns = [{"bbox": [2, 3, 8, 6], "segmentation": [[1, 2, 3]]}]  # odd count: malformed
    ds, _ = validate(read_coco(_coco(tmp_path, anns), tmp_path / "img"))
    assert ds.records[0].segmentations is None and len(ds.records[0].boxes) == 1
    with pytest.raises(DataError, match="annotations"):
        validate(read_coco(_coco(tmp_path, anns), tmp_path / "img", masks=True))
