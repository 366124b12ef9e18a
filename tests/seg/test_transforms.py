"""Seg augmentations: image and label stay aligned, padding is ignore, configs fail clearly.

The fixture image paints each class of the label in its own colour, so after any geometric
transform the class at a pixel can be read back from the image and compared to the label.
"""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.seg.data import transforms as T
from e2ekit.seg.registry import TRANSFORMS

H, W = 96, 128  # not square, so a swapped (h, w) shows up
PAD = 255
PAD_COLOUR = (128, 128, 128)  # 127.5 rounded, PaddleSeg's default im_padding_value
PALETTE = torch.tensor(
    [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230)],
    dtype=torch.float32,
)
CLASSES = set(range(len(PALETTE)))
SEEDS = range(5)


def make_label() -> torch.Tensor:
    """Background 0 and four asymmetric blobs (rectangles and a triangle)."""
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    label = torch.zeros(H, W, dtype=torch.int64)
    label[6:40, 10:60] = 1
    label[50:90, 20:50] = 2
    label[12:80, 80:118] = 3
    label[(y > 55) & (x > 60) & (y - 55 > x - 75) & (x < 120)] = 4
    return label


def make_sample() -> dict:
    label = make_label()
    image = PALETTE[label].permute(2, 0, 1).round().to(torch.uint8)  # (H,W,3) -> (3,H,W)
    return {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(label), "id": "x"}


def run(t, sample: dict, seed: int) -> dict:
    random.seed(seed)
    torch.manual_seed(seed)
    return t(sample)


def decode(image: torch.Tensor) -> torch.Tensor:
    """(3,H,W) -> (H,W) nearest palette index; len(PALETTE) marks the padding colour."""
    colours = torch.cat([PALETTE, torch.tensor([PAD_COLOUR], dtype=torch.float32)])
    pixels = image.float().permute(1, 2, 0)[..., None, :]  # (H,W,1,3)
    return ((pixels - colours) ** 2).sum(-1).argmin(-1)  # (H,W,K+1) -> (H,W)


def mismatch(out: dict) -> float:
    """Fraction of pixels whose label disagrees with the class painted in the image there."""
    expected = torch.where(out["label"] == PAD, len(PALETTE), out["label"])
    return (decode(out["image"]) != expected).float().mean().item()


def check_structure(out: dict, sample: dict) -> None:
    image, label = out["image"], out["label"]
    assert isinstance(image, tv_tensors.Image) and isinstance(label, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and label.dtype == torch.int64
    assert image.ndim == 3 and image.shape[0] == 3 and label.ndim == 2
    assert image.shape[1:] == label.shape
    assert set(label.unique().tolist()) <= CLASSES | {PAD}
    assert out["id"] == "x"  # other keys pass through
    assert torch.equal(sample["label"], make_label())  # the input is not modified in place


# (spec, max mismatch fraction, whether padding may appear)
GEOMETRIC = [
    ({"type": "RandomHorizontalFlip", "prob": 1.0}, 0.0, False),
    ({"type": "RandomVerticalFlip", "prob": 1.0}, 0.0, False),
    ({"type": "Resize", "target_size": [80, 70]}, 0.035, False),
    ({"type": "Resize", "target_size": [256, 160], "keep_ratio": True}, 0.035, False),
    ({"type": "Resize", "target_size": [64, 64], "interp": "NEAREST"}, 0.0, False),
    ({"type": "ResizeByLong", "long_size": 100}, 0.035, False),
    ({"type": "ResizeByShort", "short_size": 120, "max_size": 150}, 0.035, False),
    ({"type": "LimitLong", "max_long": 90}, 0.035, False),
    ({"type": "ResizeRangeScaling", "min_value": 60, "max_value": 200}, 0.035, False),
    ({"type": "ResizeStepScaling", "min_scale_factor": 0.5, "max_scale_factor": 2.0}, 0.035, False),
    ({"type": "ResizeStepScaling", "scale_step_size": 0}, 0.035, False),
    ({"type": "RandomPaddingCrop", "crop_size": [64, 48]}, 0.0, False),
    ({"type": "RandomPaddingCrop", "crop_size": [100, 120]}, 0.0, True),
    ({"type": "RandomPaddingCrop", "crop_size": 160, "im_padding_value": [128, 128, 128]}, 0, True),
    ({"type": "RandomCenterCrop", "retain_ratio": [0.5, 0.7]}, 0.0, False),
    ({"type": "Padding", "target_size": [150, 100]}, 0.0, True),
    ({"type": "RandomRotation", "max_rotation": 40}, 0.03, True),
    ({"type": "RandomScaleAspect", "min_scale": 0.3, "aspect_ratio": 0.5}, 0.035, False),
]
PHOTOMETRIC = [
    {
        "type": "RandomDistort",
        **{
            f"{op}_prob": 1.0 for op in ("brightness", "contrast", "saturation", "hue", "sharpness")
        },
    },
    {"type": "RandomBlur", "prob": 1.0},
    {"type": "RandomBlur", "prob": 1.0, "blur_type": "median"},
    {"type": "RandomBlur", "prob": 1.0, "blur_type": "blur"},
    {"type": "RandomBlur", "prob": 1.0, "blur_type": "random"},
    {"type": "RandomNoise", "prob": 1.0, "max_sigma": 20.0},
]


def test_every_registered_transform_is_tested() -> None:
    ours = set(TRANSFORMS.names())  # seg's own registry: every name is a seg transform
    tested = {spec["type"] for spec, _, _ in GEOMETRIC} | {s["type"] for s in PHOTOMETRIC}
    assert ours - tested == {"Normalize"}  # tested on its own below
    assert len(ours) >= 13


def test_checker_detects_misalignment() -> None:
    """The alignment check must be able to fail: a label moved without its image is caught."""
    sample = make_sample()
    assert mismatch(sample) == 0.0
    assert mismatch({**sample, "label": F.horizontal_flip(sample["label"])}) > 0.2
    shifted = torch.roll(sample["label"], shifts=3, dims=1)
    assert mismatch({**sample, "label": shifted}) > 0.04


@pytest.mark.parametrize(
    ("spec", "tol", "pads"),
    GEOMETRIC,
    ids=[f"{s['type']}-{i}" for i, (s, _, _) in enumerate(GEOMETRIC)],
)
def test_geometric_keeps_alignment(spec: dict, tol: float, pads: bool) -> None:
    t = TRANSFORMS.build(spec)
    sample = make_sample()
    padded = 0
    for seed in SEEDS:
        out = run(t, sample, seed)
        check_structure(out, sample)
        assert mismatch(out) <= tol, (spec, seed, mismatch(out))
        padded += int((out["label"] == PAD).sum())
    assert (padded > 0) == pads


@pytest.mark.parametrize("spec", PHOTOMETRIC, ids=lambda s: f"{s['type']}-{s.get('blur_type', '')}")
def test_photometric_changes_image_only(spec: dict) -> None:
    t = TRANSFORMS.build(spec)
    assert t.photometric
    sample = make_sample()
    for seed in SEEDS:
        out = run(t, sample, seed)
        check_structure(out, sample)
        assert out["label"] is sample["label"]  # not even copied
        assert out["image"].shape == sample["image"].shape
        assert not torch.equal(out["image"], sample["image"]), (spec, seed)


def test_photometric_identity_settings_leave_image_unchanged() -> None:
    sample = make_sample()
    zero = T.RandomDistort(0, 1, 0, 1, 0, 1, 0, 1, 0, 1)  # every op runs with factor 1 / shift 0
    assert torch.equal(run(zero, sample, 0)["image"], sample["image"])
    assert torch.equal(run(T.RandomNoise(prob=1, max_sigma=0), sample, 0)["image"], sample["image"])
    assert run(T.RandomBlur(prob=0), sample, 0)["image"] is sample["image"]


def test_blur_smooths_and_noise_has_the_right_scale() -> None:
    sample = make_sample()

    def roughness(img: torch.Tensor) -> float:
        return img.float().diff(dim=-1).pow(2).mean().item()  # gradient energy

    for kind in ("gaussian", "median", "blur"):
        out = run(T.RandomBlur(prob=1, blur_type=kind), sample, 1)["image"]
        if kind == "median":  # a median keeps flat regions exactly and only rounds corners
            assert (out != sample["image"]).any()
        else:
            assert roughness(out) < roughness(sample["image"]) * 0.8
    noisy = run(T.RandomNoise(prob=1, max_sigma=30), sample, 3)["image"]
    diff = noisy.float() - sample["image"].float()
    random.seed(3)
    random.random()
    sigma = random.random() * 30
    assert abs(diff[:, 40:60, 40:60].std().item() - sigma) < 0.25 * sigma + 0.5


def test_hue_matches_torchvision_in_paddleseg_units() -> None:
    g = torch.Generator().manual_seed(0)
    img = tv_tensors.Image(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g))
    for delta in (-90.0, -18.0, 7.5, 64.0, 128.0):
        ours = T._adjust_hue_paddle(img, delta)
        ref = F.adjust_hue(img, delta / 256.0)  # PIL hue circle: 256 units per turn
        assert isinstance(ours, tv_tensors.Image) and ours.dtype == torch.uint8
        assert (ours.int() - ref.int()).abs().max().item() <= 1, delta
    assert torch.equal(T._adjust_hue_paddle(img, 0.0), img)


def test_flips_mirror_exactly_and_respect_prob() -> None:
    sample = make_sample()
    out = run(T.RandomHorizontalFlip(prob=1), sample, 0)
    assert torch.equal(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["label"], sample["label"].flip(-1))
    out = run(T.RandomVerticalFlip(prob=1), sample, 0)
    assert torch.equal(out["label"], sample["label"].flip(-2))
    out = run(T.RandomHorizontalFlip(prob=0), sample, 0)
    assert torch.equal(out["label"], sample["label"])
    flips = sum(
        not torch.equal(run(T.RandomHorizontalFlip(), sample, s)["label"], sample["label"])
        for s in range(40)
    )
    assert 10 <= flips <= 30


def test_resize_sizes_follow_paddleseg() -> None:
    sample = make_sample()

    def hw(t) -> tuple[int, int]:
        out = run(t, sample, 0)
        assert out["image"].shape[1:] == out["label"].shape
        return tuple(out["label"].shape)

    assert hw(T.Resize(target_size=[40, 30])) == (30, 40)  # (width, height)
    assert hw(T.Resize(target_size=64)) == (64, 64)
    assert hw(T.Resize(target_size=[64, 64], keep_ratio=True)) == (48, 64)
    assert hw(T.Resize(target_size=[512, 256], keep_ratio=True)) == (256, 341)
    assert hw(T.ResizeByLong(64)) == (48, 64)
    assert hw(T.ResizeByShort(48)) == (48, 64)
    assert hw(T.ResizeByShort(48, max_size=50)) == (38, 50)
    assert hw(T.LimitLong(max_long=64)) == (48, 64)
    assert hw(T.LimitLong(min_long=256)) == (192, 256)
    assert run(T.LimitLong(max_long=200, min_long=50), sample, 0)["label"] is sample["label"]
    assert hw(T.ResizeRangeScaling(64, 64)) == (48, 64)
    sizes = {
        tuple(run(T.ResizeStepScaling(0.5, 1.0, 0.25), sample, s)["label"].shape) for s in range(30)
    }
    assert sizes == {(48, 64), (72, 96), (96, 128)}


def test_nearest_label_resize_keeps_ignore_pixels() -> None:
    sample = make_sample()
    label = sample["label"].clone()
    label[:10, :10] = PAD
    sample["label"] = tv_tensors.Mask(label)
    for t in (T.Resize([37, 29]), T.ResizeByLong(300), T.RandomRotation(30)):
        out = run(t, sample, 0)["label"]
        assert set(out.unique().tolist()) <= CLASSES | {PAD}
        assert (out == PAD).any() and (out == 4).any()


def test_padding_crop_pads_bottom_right_with_ignore() -> None:
    sample = make_sample()
    out = run(T.RandomPaddingCrop(crop_size=[160, 120]), sample, 0)
    image, label = out["image"], out["label"]
    assert label.shape == (120, 160)
    assert torch.equal(image[:, :H, :W], sample["image"])  # content stays at the top left
    assert torch.equal(label[:H, :W], sample["label"])
    assert (label[H:] == PAD).all() and (label[:, W:] == PAD).all()
    assert (image[:, H:] == 128).all() and (image[:, :, W:] == 128).all()
    per_channel = T.RandomPaddingCrop(crop_size=[160, 120], im_padding_value=[1, 2, 300])
    corner = run(per_channel, sample, 0)["image"][:, -1, -1]
    assert corner.tolist() == [1, 2, 255]  # clipped to uint8
    same = run(T.RandomPaddingCrop(crop_size=[W, H]), sample, 0)
    assert same["label"] is sample["label"]


def test_padding_crop_takes_an_exact_random_window() -> None:
    sample = make_sample()
    windows = set()
    for seed in SEEDS:
        out = run(T.RandomPaddingCrop(crop_size=[64, 48]), sample, seed)
        hits = [
            (top, left)
            for top in range(H - 48 + 1)
            for left in range(W - 64 + 1)
            if torch.equal(out["label"], sample["label"][top : top + 48, left : left + 64])
            and torch.equal(out["image"], sample["image"][:, top : top + 48, left : left + 64])
        ]
        assert hits, seed
        windows.add(hits[0])
        assert out["label"].is_contiguous() and out["label"].untyped_storage().size() == 48 * 64 * 8
    assert len(windows) > 1


def test_padding_crop_category_max_ratio_prefers_mixed_crops() -> None:
    label = torch.zeros(H, W, dtype=torch.int64)
    label[:, 110:] = 1
    sample = {
        "image": tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8)),
        "label": tv_tensors.Mask(label),
    }

    def mixed(ratio: float) -> int:
        t = T.RandomPaddingCrop(crop_size=32, category_max_ratio=ratio)
        return sum(len(run(t, sample, s)["label"].unique()) > 1 for s in range(30))

    assert mixed(0.95) > mixed(1.0) + 5


def test_padding_to_target_and_too_large_image() -> None:
    sample = make_sample()
    out = run(T.Padding(target_size=[150, 100], im_padding_value=[0, 10, 20]), sample, 0)
    assert out["label"].shape == (100, 150)
    assert torch.equal(out["label"][:H, :W], sample["label"])
    assert (out["label"][H:] == PAD).all() and (out["label"][:, W:] == PAD).all()
    assert out["image"][:, -1, -1].tolist() == [0, 10, 20]
    with pytest.raises(DataError, match="larger than target_size"):
        run(T.Padding(target_size=[100, 100]), sample, 0)


def test_rotation_expands_canvas_and_fills_corners() -> None:
    sample = make_sample()
    out = run(T.RandomRotation(max_rotation=30, label_padding_value=7), sample, 2)
    label = out["label"]
    assert label.shape[0] > H and label.shape[1] > W
    for corner in (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]):
        assert corner.item() == 7
    assert run(T.RandomRotation(max_rotation=0), sample, 0)["label"] is sample["label"]


def test_scale_aspect_keeps_size_and_zooms() -> None:
    sample = make_sample()
    changed = 0
    for seed in SEEDS:
        out = run(T.RandomScaleAspect(min_scale=0.3, aspect_ratio=0.5), sample, seed)
        assert out["label"].shape == (H, W)
        changed += not torch.equal(out["label"], sample["label"])
    assert changed >= 4


def test_normalize_values() -> None:
    image = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 4).expand(3, 1, 4)
    sample = {"image": tv_tensors.Image(image.clone()), "label": tv_tensors.Mask(torch.zeros(1, 4))}
    out = T.Normalize()(sample)
    assert out["image"].dtype == torch.float32 and isinstance(out["image"], tv_tensors.Image)
    expected = torch.tensor([-1.0, 51 / 127.5 - 1, 128 / 127.5 - 1, 1.0])
    torch.testing.assert_close(out["image"][0, 0], expected)
    assert out["label"] is sample["label"]

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    imagenet = T.Normalize(mean=list(mean), std=list(std))(sample)["image"]
    ref = F.normalize(image.float() / 255.0, list(mean), list(std))
    torch.testing.assert_close(imagenet, ref)
    in_255 = T.Normalize(mean=[m * 255 for m in mean], std=[s * 255 for s in std])(sample)
    torch.testing.assert_close(in_255["image"], ref)
    torch.testing.assert_close(T.Normalize(mean=0.5, std=0.5)(sample)["image"], out["image"])

    with pytest.raises(DataError, match="uint8"):
        T.Normalize()(out)
    with pytest.raises(ConfigError, match="positive"):
        T.Normalize(std=[0.5, 0.0, 0.5])


def test_samples_without_label_and_plain_tensors() -> None:
    sample = make_sample()
    plain = {"image": sample["image"].as_subclass(torch.Tensor), "meta": 1}
    out = run(
        T.build_transforms([{"type": "ResizeByLong", "long_size": 64}, {"type": "Normalize"}]),
        plain,
        0,
    )
    assert set(out) == {"image", "meta"} and out["image"].shape == (3, 48, 64)
    labelled = {
        "image": sample["image"].as_subclass(torch.Tensor),
        "label": sample["label"].as_subclass(torch.Tensor),
    }
    out = run(T.Resize([50, 40]), labelled, 0)
    assert set(out["label"].unique().tolist()) <= CLASSES  # plain label still resized nearest


def test_build_transforms_pipeline_is_deterministic_per_seed() -> None:
    specs = [
        {"type": "ResizeStepScaling", "min_scale_factor": 0.5, "max_scale_factor": 2.0},
        {"type": "RandomPaddingCrop", "crop_size": [64, 64]},
        {"type": "RandomHorizontalFlip"},
        {"type": "RandomDistort", "brightness_range": 0.4, "contrast_range": 0.4},
        {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    ]
    pipe = T.build_transforms(specs)
    assert isinstance(pipe, T.Compose) and len(pipe) == 5
    assert [type(t).__name__ for t in pipe.transforms] == [s["type"] for s in specs]
    assert "RandomPaddingCrop(crop_size=(64, 64)" in repr(pipe)
    sample = make_sample()
    a, b, c = run(pipe, sample, 11), run(pipe, sample, 11), run(pipe, sample, 12)
    assert a["image"].shape == (3, 64, 64) and a["image"].dtype == torch.float32
    assert a["label"].shape == (64, 64) and a["label"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    clone = pickle.loads(pickle.dumps(pipe))  # DataLoader workers may receive it pickled
    assert torch.equal(run(clone, sample, 11)["image"], a["image"])
    assert len(T.build_transforms(None)) == 0
    assert T.build_transforms([T.Normalize()])(sample)["image"].dtype == torch.float32


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'RandomHorizontalFlip'"):
        T.build_transforms([{"type": "RandomHorizonalFlip"}])
    with pytest.raises(ConfigError, match=r"transforms\[1\].*'probability'.*did you mean 'prob'"):
        T.build_transforms(
            [{"type": "Normalize"}, {"type": "RandomVerticalFlip", "probability": 1}]
        )
    with pytest.raises(ConfigError, match="prob"):
        T.build_transforms([{"type": "RandomHorizontalFlip", "prob": 1.5}])
    with pytest.raises(ConfigError, match="crop_size"):
        TRANSFORMS.build({"type": "RandomPaddingCrop", "crop_size": [512]})
    with pytest.raises(ConfigError, match="interp"):
        TRANSFORMS.build({"type": "Resize", "interp": "LANCZOS4"})
    with pytest.raises(ConfigError, match="min_scale_factor"):
        TRANSFORMS.build({"type": "ResizeStepScaling", "min_scale_factor": 2.0})
    with pytest.raises(ConfigError, match="blur_type"):
        TRANSFORMS.build({"type": "RandomBlur", "blur_type": "motion"})
    with pytest.raises(ConfigError, match="before Normalize"):
        T.build_transforms([{"type": "Normalize"}, {"type": "RandomDistort"}])
    with pytest.raises(ConfigError, match="list"):
        T.build_transforms({"type": "Normalize"})  # type: ignore[arg-type]


def test_shared_argument_checks_keep_seg_conventions() -> None:
    """Sizes read as [width, height]; interp by name in any case or OpenCV code (not 4)."""
    assert T.Resize(target_size=[40, 30]).target_size == (40, 30)
    with pytest.raises(ConfigError, match=r"Padding\.target_size .*\[width, height\]"):
        T.Padding(target_size=[0, 30])
    assert [T.Resize(interp=v).interp for v in ("linear", 2, "RANDOM")] == [
        "LINEAR",
        "CUBIC",
        "RANDOM",
    ]
    with pytest.raises(ConfigError, match=r"Resize\.interp 4 .*OpenCV code 0-3"):
        T.Resize(interp=4)
    with pytest.raises(DataError, match=r"Padding\.im_padding_value has 2 values"):
        T.Padding(target_size=8, im_padding_value=[1, 2])({"image": torch.zeros(3, 4, 4)})
