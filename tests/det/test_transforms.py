"""Det augmentations: boxes stay on their objects, labels stay with their boxes, configs fail
clearly.

The fixture paints each box as a filled rectangle in its label's colour on a grey
background, so after any geometric transform the colour under a box can be read back and
compared with its label: the strips just inside each edge must be that colour and the
strips just outside must not.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.det.data import transforms as T
from e2ekit.det.data.transforms._base import prepare

H, W = 96, 128  # not square, so a swapped (h, w) shows up
BG = (40, 40, 40)
LABEL_COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
OTHER = [(114, 114, 114), (124, 116, 104), (0, 0, 0)]  # mosaic fill, expand fill, padding
PALETTE = torch.tensor([BG, *LABEL_COLOURS, *OTHER], dtype=torch.float32)
BOXES = [[10, 8, 50, 40], [70, 20, 118, 60], [20, 55, 60, 88]]  # >= 10 px apart
LABELS = [0, 1, 2]
SEEDS = range(4)


def make_sample(boxes=BOXES, labels=LABELS, h: int = H, w: int = W) -> dict:
    image = torch.tensor(BG, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).clone()
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        image[:, y1:y2, x1:x2] = torch.tensor(LABEL_COLOURS[label], dtype=torch.uint8).view(3, 1, 1)
    return {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(h, w),
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": 7,
    }


def run(t, sample: dict, seed: int, **kwargs) -> dict:
    torch.manual_seed(seed)
    return t(sample, **kwargs)


def decode(image: torch.Tensor) -> torch.Tensor:
    """(3,H,W) -> (H,W) nearest palette index (label k is k + 1)."""
    pixels = image.float().permute(1, 2, 0)[..., None, :]
    return ((pixels - PALETTE) ** 2).sum(-1).argmin(-1)


def check_structure(out: dict) -> None:
    image, boxes, labels = out["image"], out["boxes"], out["labels"]
    assert isinstance(image, tv_tensors.Image) and image.ndim == 3 and image.shape[0] == 3
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == tuple(image.shape[-2:])
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
    h, w = image.shape[-2:]
    if len(boxes):  # inside the image and not degenerate
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert out["image_id"] == 7  # other keys pass through


def check_aligned(out: dict, min_side: float = 8.0) -> int:
    """Each box's edges sit on its object's edges, to about a pixel.

    The 2-pixel strips just inside each edge must be the label's colour, the 2-pixel
    strips one pixel outside it (a pixel of slack for resampling blur) must not be.
    Returns how many boxes were big enough to check.
    """
    index = decode(out["image"])
    h, w = index.shape
    checked = 0
    for box, label in zip(out["boxes"].tolist(), out["labels"].tolist(), strict=True):
        x1, y1 = math.ceil(box[0] - 1e-3), math.ceil(box[1] - 1e-3)
        x2, y2 = math.floor(box[2] + 1e-3), math.floor(box[3] + 1e-3)
        if x2 - x1 < min_side or y2 - y1 < min_side:
            continue
        checked += 1
        is_colour = index == label + 1
        rows, cols = slice(y1 + 1, y2 - 1), slice(x1 + 1, x2 - 1)
        inside = {
            "left": is_colour[rows, x1 : x1 + 2],
            "right": is_colour[rows, x2 - 2 : x2],
            "top": is_colour[y1 : y1 + 2, cols],
            "bottom": is_colour[y2 - 2 : y2, cols],
        }
        for side, part in inside.items():
            assert part.float().mean() >= 0.7, (box, label, f"{side}: inside is not the colour")
        assert is_colour[rows, cols].float().mean() >= 0.85, (box, label)
        outside = {}
        if x1 - 3 >= 0:
            outside["left"] = is_colour[rows, x1 - 3 : x1 - 1]
        if x2 + 3 <= w:
            outside["right"] = is_colour[rows, x2 + 1 : x2 + 3]
        if y1 - 3 >= 0:
            outside["top"] = is_colour[y1 - 3 : y1 - 1, cols]
        if y2 + 3 <= h:
            outside["bottom"] = is_colour[y2 + 1 : y2 + 3, cols]
        for side, part in outside.items():
            assert part.float().mean() <= 0.3, (box, label, f"{side}: colour past the box")
    return checked


# ----------------------------------------------------------------------------- geometric

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
    {"type": "SanitizeBoxes"},
]


@pytest.mark.parametrize("spec", GEOMETRIC, ids=lambda s: s["type"])
def test_geometric_keeps_boxes_on_objects(spec):
    t = T.build_transforms([spec])
    for seed in SEEDS:
        sample = make_sample()
        out = run(t, sample, seed)
        check_structure(out)
        assert len(out["boxes"]) >= 1
        assert check_aligned(out) >= 1
        assert torch.equal(sample["boxes"], make_sample()["boxes"])  # input untouched
        assert torch.equal(sample["image"], make_sample()["image"])


def test_pipeline_keeps_boxes_on_objects():
    t = T.build_transforms(
        [
            {"RandomExpand": {"prob": 0.5, "ratio": 2.0}},  # PaddleDetection's form
            {"RandomCrop": {}},
            {"RandomFlip": {}},
            {"RandomResize": {"target_size": [96, 128, 160]}},
            {"SanitizeBoxes": None},
        ]
    )
    for seed in range(6):
        out = run(t, make_sample(), seed)
        check_structure(out)
        check_aligned(out)


def test_flip_math_exact():
    sample = make_sample()
    out = run(T.RandomFlip(prob=1.0), sample, 0)
    b = torch.tensor(BOXES, dtype=torch.float32)
    expected = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.equal(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["labels"], sample["labels"])
    assert torch.equal(run(T.RandomFlip(prob=0.0), sample, 0)["boxes"], sample["boxes"])


@pytest.mark.parametrize(
    ("target", "size"),
    [([64, 200], (64, 85)), ([48, 1000], (48, 64)), (192, (144, 192)), ([200, 160], (150, 200))],
)
def test_resize_keep_ratio_exact(target, size):
    """PaddleDetection: scale = min(min(t) / min(h, w), max(t) / max(h, w)), int(x + 0.5)."""
    out = T.Resize(target_size=target, keep_ratio=True)(make_sample())
    assert tuple(out["image"].shape[-2:]) == size
    sy, sx = size[0] / H, size[1] / W
    expected = torch.tensor(BOXES, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
    torch.testing.assert_close(out["scale_factor"], torch.tensor([sy, sx]))


def test_resize_no_keep_ratio_and_scale_factor_accumulates():
    out = T.Resize(target_size=[48, 32], keep_ratio=False)(make_sample())
    assert tuple(out["image"].shape[-2:]) == (48, 32)
    out = T.Resize(target_size=[96, 64], keep_ratio=False)(out)
    torch.testing.assert_close(out["scale_factor"], torch.tensor([1.0, 0.5]))


def test_random_resize_picks_from_sizes():
    t = T.RandomResize(target_size=[[48, 64], [96, 128], [144, 192]], keep_ratio=False)
    seen = {tuple(run(t, make_sample(), seed)["image"].shape[-2:]) for seed in range(12)}
    assert seen <= {(48, 64), (96, 128), (144, 192)} and len(seen) >= 2


def test_random_crop_drops_boxes_with_their_labels():
    t = T.RandomCrop(allow_no_crop=False, scaling=[0.3, 0.5])
    dropped = 0
    for seed in range(10):
        out = run(t, make_sample(), seed)
        check_structure(out)
        check_aligned(out, min_side=4)
        assert out["image"].shape[-2] < H or out["image"].shape[-1] < W
        dropped += len(out["boxes"]) < len(BOXES)
        # a label present must still sit on its colour (checked above); none is duplicated
        assert len(set(out["labels"].tolist())) == len(out["labels"])
    assert dropped > 0


def test_random_crop_without_boxes_is_a_no_op():
    sample = make_sample(boxes=[], labels=[])
    out = run(T.RandomCrop(allow_no_crop=False), sample, 0)
    assert out["image"].shape == sample["image"].shape and len(out["boxes"]) == 0


def test_sanitize_drops_degenerate_and_outside_boxes_with_labels():
    sample = make_sample()
    sample["boxes"] = tv_tensors.BoundingBoxes(
        torch.tensor(
            [[0, 0, 10, 10], [5, 5, 5.5, 20], [120, 90, 140, 100], [130, 0, 140, 10], [3, 3, 9, 9]]
        ),
        format="XYXY",
        canvas_size=(H, W),
    )
    sample["labels"] = torch.tensor([0, 1, 2, 1, 0])
    sample["iscrowd"] = torch.tensor([False, False, True, False, False])
    out = T.SanitizeBoxes()(sample)
    assert out["labels"].tolist() == [0, 2, 0]
    assert out["iscrowd"].tolist() == [False, True, False]
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [120, 90, 128, 96], [3, 3, 9, 9]]


def test_expand_fills_with_mean_and_shifts_boxes():
    out = run(T.RandomExpand(prob=1.0, ratio=4.0), make_sample(), 3)
    h, w = out["image"].shape[-2:]
    assert h > H and w > W
    index = decode(out["image"])
    assert (index == 5).float().mean() > 0.3  # the ImageNet-mean fill (124, 116, 104)
    check_aligned(out)


def test_pad_to_stride_and_size():
    out = T.Pad(size_divisor=32)(make_sample(h=50, w=70, boxes=[[5, 5, 30, 30]], labels=[1]))
    assert tuple(out["image"].shape[-2:]) == (64, 96)
    assert out["boxes"].tolist() == [[5, 5, 30, 30]]
    with pytest.raises(DataError, match=r"larger than Pad\.size"):
        T.Pad(size=[32, 32])(make_sample())


# ----------------------------------------------------------------------------- photometric


def test_distort_keeps_boxes_and_changes_pixels():
    sample = make_sample()
    t = T.build_transforms([{"type": "RandomDistort", "random_channel": True}])
    changed = 0
    for seed in SEEDS:
        out = run(t, sample, seed)
        check_structure(out)
        assert torch.equal(out["boxes"], sample["boxes"])
        assert torch.equal(out["labels"], sample["labels"])
        assert out["image"].dtype == torch.uint8 and out["image"].shape == sample["image"].shape
        changed += not torch.equal(out["image"], sample["image"])
    assert changed > 0
    assert torch.equal(run(t, sample, 1)["image"], run(t, sample, 1)["image"])  # seeded


def test_normalize_values():
    out = T.build_transforms([{"type": "NormalizeImage"}])(make_sample())
    image = out["image"]
    assert image.dtype == torch.float32 and isinstance(image, tv_tensors.Image)
    red = image[:, 10, 20]  # inside the red box: (230, 30, 30)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(red, (torch.tensor([230, 30, 30]) / 255 - mean) / std)
    pixels = T.Normalize(mean=[100.0], std=[2.0], is_scale=False)(make_sample())["image"]
    torch.testing.assert_close(pixels[:, 0, 0], torch.full((3,), (40 - 100) / 2.0))


# ----------------------------------------------------------------------------- mixing


def test_mosaic_grid_is_exact():
    """Centre fixed at the middle, tiles the input size: a 2x2 grid, boxes just shifted."""
    samples = [make_sample() for _ in range(4)]
    t = T.Mosaic(target_size=[2 * H, 2 * W], center_ratio=[1.0, 1.0])
    out = t.mix([prepare(s, "test") for s in samples])
    assert tuple(out["image"].shape) == (3, 2 * H, 2 * W)
    b = torch.tensor(BOXES, dtype=torch.float32)
    shifts = [(0, 0), (W, 0), (0, H), (W, H)]
    expected = torch.cat([b + torch.tensor([dx, dy, dx, dy]) for dx, dy in shifts])
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), expected)
    assert out["labels"].tolist() == LABELS * 4
    for k, (dx, dy) in enumerate(shifts):
        assert torch.equal(out["image"][:, dy : dy + H, dx : dx + W], samples[k]["image"])


def test_mosaic_random_centre_clips_and_aligns():
    others = iter([])

    def sample_fn():
        nonlocal others
        return next(others)

    t = T.Mosaic(target_size=160, min_box_size=2)
    for seed in range(6):
        others = iter([make_sample(), make_sample(h=80, w=60), make_sample()])
        out = run(t, make_sample(), seed, sample_fn=sample_fn)
        check_structure(out)
        assert tuple(out["image"].shape[-2:]) == (160, 160)
        assert 1 <= len(out["boxes"]) <= 12
        wh = out["boxes"][:, 2:] - out["boxes"][:, :2]
        assert (wh >= 2).all()
        check_aligned(out, min_side=6)


def test_mixup_blends_and_concatenates():
    a = make_sample()
    b = make_sample(boxes=[[5, 5, 40, 30]], labels=[2], h=64, w=160)
    b["scores"] = torch.tensor([0.5])
    t = T.Mixup()
    out = run(t, a, 0, sample_fn=lambda: b)
    check_structure(out)
    assert tuple(out["image"].shape[-2:]) == (H, 160)  # max height, max width
    assert out["labels"].tolist() == [*LABELS, 2]
    assert out["boxes"].tolist() == [*BOXES, [5, 5, 40, 30]]  # coordinates unchanged
    f = float(out["scores"][0])
    assert 0 < f < 1
    torch.testing.assert_close(out["scores"], torch.tensor([f, f, f, 0.5 * (1 - f)]))
    canvas = torch.zeros(3, H, 160)
    canvas[:, :H, :W] += a["image"].float() * f
    canvas[:, :64, :160] += b["image"].float() * (1 - f)
    assert (out["image"].float() - canvas).abs().max() <= 1.0


def test_mix_transforms_need_sample_fn():
    with pytest.raises(DataError, match="TransformDataset"):
        T.Mixup()(make_sample())
    with pytest.raises(DataError, match="sample_fn"):
        T.build_transforms([{"type": "Mosaic", "target_size": 64}])(make_sample())


def test_transform_dataset_feeds_mix_transforms_preprocessed_samples():
    class Counting(list):
        reads = 0

        def __getitem__(self, index):
            Counting.reads += 1
            return super().__getitem__(index)

    raw = Counting([make_sample(), make_sample(h=80, w=100, boxes=[[10, 10, 50, 50]], labels=[1])])
    raw.append(make_sample(h=120, w=90, boxes=[[20, 30, 80, 100]], labels=[2]))
    specs = [
        {"type": "Resize", "target_size": [64, 64], "keep_ratio": False},
        {"type": "Mosaic", "target_size": [128, 128]},
        {"type": "RandomFlip"},
        {"type": "Mixup", "prob": 0.5},
        {"type": "SanitizeBoxes"},
    ]
    ds = T.TransformDataset(raw, specs)
    assert len(ds) == 3
    mixed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        Counting.reads = 0
        out = ds[seed % 3]
        check_structure(out)
        assert tuple(out["image"].shape[-2:]) == (128, 128)
        # 1 + 3 for the mosaic, + 1 when Mixup fires: its extra sample is resized and
        # flipped but not mosaicked again (mix transforms are skipped for extras)
        assert Counting.reads == 4 + ("scores" in out)
        mixed += "scores" in out
        assert 1 <= len(out["boxes"]) <= 12 + 3
        if "scores" not in out:
            check_aligned(out, min_side=6)
        torch.manual_seed(seed)
        again = ds[seed % 3]
        assert torch.equal(out["image"], again["image"])
        assert torch.equal(out["boxes"], again["boxes"])
    assert 0 < mixed < 6
    ds.transforms.set_mix_enabled(False)
    assert tuple(ds[0]["image"].shape[-2:]) == (64, 64)


# ----------------------------------------------------------------------------- batches


def test_pad_collate_shapes_and_stride():
    small = make_sample(h=50, w=70, boxes=[[5, 5, 30, 30]], labels=[1])
    big = make_sample(h=60, w=100)
    images, targets = T.pad_collate([small, big], stride=32)
    assert images.shape == (2, 3, 64, 128) and images.dtype == torch.float32
    assert images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0
    assert torch.equal(images[0, :, :50, :70], small["image"].float())
    assert (images[0, :, 50:] == 0).all() and (images[0, :, :, 70:] == 0).all()
    assert type(targets[0]["boxes"]) is torch.Tensor and targets[0]["boxes"].dtype == torch.float32
    assert targets[0]["boxes"].tolist() == [[5, 5, 30, 30]]
    assert targets[1]["labels"].tolist() == LABELS and targets[1]["labels"].dtype == torch.int64
    assert targets[0]["image_size"].tolist() == [50, 70] and targets[1]["image_id"] == 7
    images, _ = T.pad_collate([small], stride=1)
    assert images.shape == (1, 3, 50, 70)
    images, targets = T.pad_collate([{"image": small["image"]}], stride=32, pad_value=-1.0)
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["labels"].shape == (0,)
    assert (images[0, :, 50:] == -1).all()


def test_batch_random_resize_one_size_per_batch():
    collate = T.DetCollate(
        [
            {"BatchRandomResize": {"target_size": [64, 96, 128], "random_interp": True}},
            {"NormalizeImage": {}},
        ],
        stride=32,
    )
    collate = pickle.loads(pickle.dumps(collate))  # DataLoader workers pickle the collate_fn
    sizes = set()
    for seed in range(6):
        torch.manual_seed(seed)
        batch = [make_sample(), make_sample(h=50, w=70, boxes=[[5, 5, 30, 30]], labels=[1])]
        resized = collate.batch_transforms.transforms[0](batch)
        shapes = {tuple(s["image"].shape[-2:]) for s in resized}
        assert len(shapes) == 1
        sizes |= shapes
        for s in resized:
            check_structure(s)
            check_aligned(s, min_side=6)
        torch.manual_seed(seed)
        images, _ = collate(batch)
        assert images.shape[0] == 2 and images.shape[-2:] == resized[0]["image"].shape[-2:]
        assert images.dtype == torch.float32 and images.min() < 0  # normalized
    assert sizes <= {(64, 64), (96, 96), (128, 128)} and len(sizes) >= 2


def test_pad_batch():
    batch = [make_sample(h=50, w=70, boxes=[[5, 5, 30, 30]], labels=[1]), make_sample()]
    out = T.build_batch_transforms([{"type": "PadBatch", "pad_to_stride": 32}])(batch)
    assert {tuple(s["image"].shape[-2:]) for s in out} == {(96, 128)}
    assert out[0]["boxes"].tolist() == [[5, 5, 30, 30]]


# ----------------------------------------------------------------------------- config & data errors


def test_unknown_type_suggests_closest():
    with pytest.raises(
        ConfigError, match=r"transforms\[1\].*'RandomFlp'.*did you mean 'RandomFlip'"
    ):
        T.build_transforms([{"type": "Resize"}, {"type": "RandomFlp"}])
    with pytest.raises(ConfigError, match="did you mean 'BatchRandomResize'"):
        T.build_batch_transforms([{"type": "BatchRandomResise"}])


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match=r"no argument 'probb'.*did you mean 'prob'"):
        T.build_transforms([{"type": "RandomFlip", "probb": 0.5}])
    with pytest.raises(ConfigError, match=r"RandomFlip\.prob must be in \[0, 1\]"):
        T.build_transforms([{"type": "RandomFlip", "prob": 1.5}])
    with pytest.raises(ConfigError, match=r"Resize\.target_size"):
        T.build_transforms([{"type": "Resize", "target_size": [1, 2, 3]}])
    with pytest.raises(ConfigError, match=r"Resize\.interp 'CUBE'.*did you mean 'CUBIC'"):
        T.build_transforms([{"type": "Resize", "interp": "CUBE"}])
    with pytest.raises(ConfigError, match=r"RandomDistort\.hue"):
        T.build_transforms([{"type": "RandomDistort", "hue": [18, -18, 0.5]}])
    with pytest.raises(ConfigError, match="must be a list"):
        T.build_transforms({"type": "RandomFlip"})


def test_uint8_only_transforms_must_precede_normalize():
    with pytest.raises(ConfigError, match=r"RandomDistort.*before Normalize \(transforms\[0\]\)"):
        T.build_transforms([{"type": "Normalize"}, {"type": "RandomDistort"}])
    with pytest.raises(DataError, match="uint8"):
        T.RandomExpand(prob=1.0)(T.Normalize()(make_sample()))


def test_sample_validation_and_plain_inputs():
    sample = make_sample()
    plain = {
        "image": sample["image"].as_subclass(torch.Tensor),
        "boxes": np.array(BOXES, dtype=np.float64),
        "labels": [0, 1, 2],
    }
    out = T.RandomFlip(prob=1.0)(plain)
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and out["labels"].dtype == torch.int64
    with pytest.raises(DataError, match="'labels' has"):
        T.RandomFlip()({**plain, "labels": [0, 1]})
    with pytest.raises(DataError, match="no 'labels'"):
        T.RandomFlip()({"image": plain["image"], "boxes": plain["boxes"]})
    with pytest.raises(DataError, match="canvas_size"):
        T.RandomFlip()({**sample, "image": sample["image"][:, :50]})


def test_pipeline_is_picklable_and_seeded():
    specs = [
        {"type": "RandomDistort"},
        {"type": "RandomExpand"},
        {"type": "RandomCrop"},
        {"type": "RandomFlip"},
        {"type": "Resize", "target_size": 64},
        {"type": "Normalize"},
    ]
    t = pickle.loads(pickle.dumps(T.build_transforms(specs)))
    assert len(t) == 6 and "RandomCrop(" in repr(t)
    a, b = run(t, make_sample(), 5), run(t, make_sample(), 5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
