"""PaddleSeg-style augmentations that keep an image and its label map aligned.

A transform is a callable ``t(sample) -> sample`` on ``{"image": tv_tensors.Image uint8
(3,H,W), "label": tv_tensors.Mask int64 (H,W), ...}``; other keys pass through unchanged
and ``label`` may be absent (inference). Transforms are registered in ``TRANSFORMS`` under
the names a PaddleSeg user writes in YAML and take PaddleSeg's arguments, so a PaddleSeg
``transforms:`` list builds as is with :func:`build_transforms`.

Conventions (the same as PaddleSeg's):

* sizes (``target_size``, ``crop_size``) are ``(width, height)``, or one int for a square;
* padding pads the bottom and right; the label there gets ``label_padding_value`` (255,
  ignored by the losses and metrics); pixel values are 0..255 units, rounded for uint8;
* ``Normalize`` takes mean/std in 0..1 units and comes last: everything before it works on
  uint8 tensors, which keeps the data path cheap on a few CPU cores.

Geometric transforms resize or warp the label with nearest-neighbour sampling through the
same torchvision v2 functional op as the image (tv_tensors pick the kernel), so they never
invent class values; photometric transforms never touch the label. Randomness comes from
Python's ``random`` and torch's global generators, which the engine seeds per sample.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.transform_args import (
    fill_arg,
    interp_arg,
    is_int,
    is_number,
    is_seq,
    number_arg,
    pixel_fill,
    prob_arg,
    size_arg,
)
from e2ekit.core.transform_order import check_uint8_order
from e2ekit.seg.registry import TRANSFORMS

__all__ = [
    "Compose",
    "LimitLong",
    "Normalize",
    "Padding",
    "RandomBlur",
    "RandomCenterCrop",
    "RandomDistort",
    "RandomHorizontalFlip",
    "RandomNoise",
    "RandomPaddingCrop",
    "RandomRotation",
    "RandomScaleAspect",
    "RandomVerticalFlip",
    "Resize",
    "ResizeByLong",
    "ResizeByShort",
    "ResizeRangeScaling",
    "ResizeStepScaling",
    "SegTransform",
    "build_transforms",
]

Sample = dict[str, Any]
Fill = float | Sequence[float]

# PaddleSeg's cv2 interpolation names -> torchvision modes (labels always use nearest).
_INTERP = {
    "LINEAR": InterpolationMode.BILINEAR,
    "NEAREST": InterpolationMode.NEAREST_EXACT,  # the same sampling as the label
    "CUBIC": InterpolationMode.BICUBIC,
    "AREA": InterpolationMode.BILINEAR,  # anti-aliased bilinear is torchvision's area-like mode
}
# Nearest with pixel centres aligned (the image resizers use half-pixel centres too).
_LABEL_INTERP = InterpolationMode.NEAREST_EXACT
#: Sizes are written [width, height], as in PaddleSeg.
_WH = "width, height"


# ----------------------------------------------------------------------------- validation


def _label_fill(value: Any, what: str) -> int:
    """The class id that padding writes into the label map."""
    if not is_int(value):
        raise ConfigError(f"{what} must be an int class id (255 = ignore), got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- tensor helpers


def _window(
    x: torch.Tensor, top: int, left: int, height: int, width: int, fill: Sequence[float] | float
) -> torch.Tensor:
    """``x[..., top:top+height, left:left+width]`` of ``x`` extended bottom/right with ``fill``.

    PaddleSeg's pad-then-crop in one copy; the result is contiguous (a view would keep the
    whole source alive and be shipped whole between DataLoader processes).
    """
    h, w = x.shape[-2:]
    if top + height <= h and left + width <= w:
        return x[..., top : top + height, left : left + width].contiguous()
    out = x.new_empty((*x.shape[:-2], height, width))
    if isinstance(fill, (int, float)):
        out.fill_(fill)
    else:  # one value per channel: (C,) -> (C,1,1) broadcast
        out.copy_(torch.tensor(fill, dtype=x.dtype).view(-1, 1, 1).expand_as(out))
    ih, iw = max(0, min(height, h - top)), max(0, min(width, w - left))
    out[..., :ih, :iw] = x[..., top : top + ih, left : left + iw]
    return out


def _resize(
    image: torch.Tensor,
    label: torch.Tensor | None,
    height: int,
    width: int,
    interp: InterpolationMode = InterpolationMode.BILINEAR,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize both; tv_tensors dispatch the image to ``interp`` and the mask to nearest."""
    size = [max(1, int(height)), max(1, int(width))]
    image = F.resize(image, size, interpolation=interp, antialias=True)
    if label is not None:
        label = F.resize(label, size, interpolation=_LABEL_INTERP)
    return image, label


# ----------------------------------------------------------------------------- base


class SegTransform:
    """Base: unpack the sample, call :meth:`apply` on (image, label), repack."""

    #: changes pixel values only and needs a uint8 image (so must come before Normalize)
    photometric: ClassVar[bool] = False

    def __call__(self, sample: Sample) -> Sample:
        if "image" not in sample:
            raise DataError(
                f"{type(self).__name__}: the sample has no 'image' (keys: {sorted(sample)})"
            )
        image = sample["image"]
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        label = sample.get("label")
        if label is not None and not isinstance(label, tv_tensors.Mask):
            label = tv_tensors.Mask(label)
        if self.photometric and image.dtype != torch.uint8:
            raise DataError(
                f"{type(self).__name__} needs a uint8 image, got {image.dtype}; "
                "put it before Normalize"
            )
        image, label = self.apply(image, label)
        out = dict(sample)
        out["image"] = image
        if label is not None:
            out["label"] = label
        return out

    def apply(
        self, image: tv_tensors.Image, label: tv_tensors.Mask | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names if hasattr(self, n))
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- flips


@TRANSFORMS.register()
class RandomHorizontalFlip(SegTransform):
    """Mirror left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob_arg(prob, "RandomHorizontalFlip.prob")

    def apply(self, image, label):
        if random.random() < self.prob:
            image = F.horizontal_flip(image)
            label = None if label is None else F.horizontal_flip(label)
        return image, label


@TRANSFORMS.register()
class RandomVerticalFlip(SegTransform):
    """Mirror top-bottom with probability ``prob`` (PaddleSeg's default is rare: 0.1)."""

    def __init__(self, prob: float = 0.1) -> None:
        self.prob = prob_arg(prob, "RandomVerticalFlip.prob")

    def apply(self, image, label):
        if random.random() < self.prob:
            image = F.vertical_flip(image)
            label = None if label is None else F.vertical_flip(label)
        return image, label


# ----------------------------------------------------------------------------- resizes


@TRANSFORMS.register()
class Resize(SegTransform):
    """Resize to ``target_size`` (w, h); with ``keep_ratio`` fit inside it, keeping the aspect.

    ``keep_ratio`` follows PaddleSeg: scale = min(max(target)/long side, min(target)/short
    side). ``interp`` is one of LINEAR, NEAREST, CUBIC, AREA (or its OpenCV code) or RANDOM
    (image only).
    """

    def __init__(
        self,
        target_size: int | Sequence[int] = (512, 512),
        keep_ratio: bool = False,
        interp: str | int = "LINEAR",
    ) -> None:
        self.target_size = size_arg(target_size, "Resize.target_size", _WH)
        self.keep_ratio = bool(keep_ratio)
        self.interp = interp_arg(interp, "Resize.interp", [*_INTERP, "RANDOM"])

    def apply(self, image, label):
        name = random.choice(list(_INTERP)) if self.interp == "RANDOM" else self.interp
        tw, th = self.target_size
        if self.keep_ratio:
            h, w = image.shape[-2:]
            scale = min(max(tw, th) / max(h, w), min(tw, th) / min(h, w))
            tw, th = round(w * scale), round(h * scale)
        return _resize(image, label, th, tw, _INTERP[name])


def _resize_long(image, label, long_size: int):
    h, w = image.shape[-2:]
    scale = long_size / max(h, w)
    return _resize(image, label, round(h * scale), round(w * scale))


@TRANSFORMS.register()
class ResizeByLong(SegTransform):
    """Scale so the longer side is ``long_size``, keeping the aspect ratio."""

    def __init__(self, long_size: int) -> None:
        self.long_size = int(number_arg(long_size, "ResizeByLong.long_size", 1))

    def apply(self, image, label):
        return _resize_long(image, label, self.long_size)


@TRANSFORMS.register()
class ResizeByShort(SegTransform):
    """Scale so the shorter side is ``short_size``; cap the longer at ``max_size`` if > 0."""

    def __init__(self, short_size: int, max_size: int = -1) -> None:
        self.short_size = int(number_arg(short_size, "ResizeByShort.short_size", 1))
        self.max_size = int(number_arg(max_size, "ResizeByShort.max_size"))

    def apply(self, image, label):
        h, w = image.shape[-2:]
        scale = self.short_size / min(h, w)
        if self.max_size > 0 and round(scale * max(h, w)) > self.max_size:
            scale = self.max_size / max(h, w)
        return _resize(image, label, round(h * scale), round(w * scale))


@TRANSFORMS.register()
class LimitLong(SegTransform):
    """Shrink so the long side is at most ``max_long``, grow to at least ``min_long``."""

    def __init__(self, max_long: int | None = None, min_long: int | None = None) -> None:
        self.max_long = (
            None if max_long is None else int(number_arg(max_long, "LimitLong.max_long", 1))
        )
        self.min_long = (
            None if min_long is None else int(number_arg(min_long, "LimitLong.min_long", 1))
        )
        if (
            self.max_long is not None
            and self.min_long is not None
            and self.min_long > self.max_long
        ):
            raise ConfigError(
                f"LimitLong.min_long ({self.min_long}) is larger than max_long ({self.max_long})"
            )

    def apply(self, image, label):
        long = max(image.shape[-2:])
        target = long
        if self.max_long is not None and long > self.max_long:
            target = self.max_long
        elif self.min_long is not None and long < self.min_long:
            target = self.min_long
        if target == long:
            return image, label
        return _resize_long(image, label, target)


@TRANSFORMS.register()
class ResizeRangeScaling(SegTransform):
    """Scale the long side to a random length in [min_value, max_value]."""

    def __init__(self, min_value: int = 400, max_value: int = 600) -> None:
        self.min_value = int(number_arg(min_value, "ResizeRangeScaling.min_value", 1))
        self.max_value = int(number_arg(max_value, "ResizeRangeScaling.max_value", 1))
        if self.min_value > self.max_value:
            raise ConfigError(
                f"ResizeRangeScaling.min_value ({self.min_value}) is larger than "
                f"max_value ({self.max_value})"
            )

    def apply(self, image, label):
        long = self.max_value
        if self.min_value != self.max_value:
            long = int(random.uniform(self.min_value, self.max_value) + 0.5)
        return _resize_long(image, label, long)


@TRANSFORMS.register()
class ResizeStepScaling(SegTransform):
    """Scale by a random factor from min..max in steps of ``scale_step_size`` (0: continuous).

    The multi-scale training augmentation of PaddleSeg's Cityscapes/ADE20K recipes.
    """

    def __init__(
        self,
        min_scale_factor: float = 0.75,
        max_scale_factor: float = 1.25,
        scale_step_size: float = 0.25,
    ) -> None:
        self.min_scale_factor = number_arg(
            min_scale_factor, "ResizeStepScaling.min_scale_factor", 0
        )
        self.max_scale_factor = number_arg(
            max_scale_factor, "ResizeStepScaling.max_scale_factor", 0
        )
        self.scale_step_size = number_arg(scale_step_size, "ResizeStepScaling.scale_step_size", 0)
        if self.min_scale_factor <= 0 or self.min_scale_factor > self.max_scale_factor:
            raise ConfigError(
                "ResizeStepScaling needs 0 < min_scale_factor <= max_scale_factor, got "
                f"{self.min_scale_factor} and {self.max_scale_factor}"
            )
        lo, hi, step = self.min_scale_factor, self.max_scale_factor, self.scale_step_size
        if lo == hi or step == 0:
            self._factors: list[float] = [lo] if lo == hi else []
        else:  # PaddleSeg: linspace(lo, hi, int((hi - lo) / step + 1))
            n = int((hi - lo) / step + 1)
            self._factors = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [lo]

    def apply(self, image, label):
        if self._factors:
            scale = random.choice(self._factors)
        else:
            scale = random.uniform(self.min_scale_factor, self.max_scale_factor)
        if scale == 1.0:
            return image, label
        h, w = image.shape[-2:]
        return _resize(image, label, round(h * scale), round(w * scale))


# ----------------------------------------------------------------------------- crops and pads


@TRANSFORMS.register()
class RandomPaddingCrop(SegTransform):
    """Pad bottom/right up to ``crop_size`` (w, h) if smaller, then crop a random window.

    With ``category_max_ratio`` < 1 it retries (up to 10 times) until no single class
    (``ignore_index`` aside) covers more than that fraction of the crop, as PaddleSeg does.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = (512, 512),
        im_padding_value: Fill = 127.5,
        label_padding_value: int = 255,
        category_max_ratio: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = size_arg(crop_size, "RandomPaddingCrop.crop_size", _WH)
        self.im_padding_value = fill_arg(im_padding_value, "RandomPaddingCrop.im_padding_value")
        self.label_padding_value = _label_fill(
            label_padding_value, "RandomPaddingCrop.label_padding_value"
        )
        self.category_max_ratio = number_arg(
            category_max_ratio, "RandomPaddingCrop.category_max_ratio", 0, 1
        )
        self.ignore_index = int(ignore_index)

    def apply(self, image, label):
        cw, ch = self.crop_size
        h, w = image.shape[-2:]
        if (h, w) == (ch, cw):
            return image, label
        max_top, max_left = max(h, ch) - ch, max(w, cw) - cw
        top, left = random.randint(0, max_top), random.randint(0, max_left)
        out_label = None
        if label is not None:
            out_label = _window(label, top, left, ch, cw, self.label_padding_value)
            if self.category_max_ratio < 1.0:
                for _ in range(9):
                    counts = torch.unique(
                        out_label[out_label != self.ignore_index], return_counts=True
                    )[1]
                    if len(counts) > 1 and counts.max() / counts.sum() < self.category_max_ratio:
                        break
                    top, left = random.randint(0, max_top), random.randint(0, max_left)
                    out_label = _window(label, top, left, ch, cw, self.label_padding_value)
            out_label = tv_tensors.wrap(out_label, like=label)
        fill = pixel_fill(self.im_padding_value, image, "RandomPaddingCrop.im_padding_value")
        out_image = tv_tensors.wrap(_window(image, top, left, ch, cw, fill), like=image)
        return out_image, out_label


@TRANSFORMS.register()
class RandomCenterCrop(SegTransform):
    """Crop a random window keeping at least ``retain_ratio`` (w, h) of each side."""

    def __init__(self, retain_ratio: float | Sequence[float] = (0.5, 0.5)) -> None:
        ratio = (retain_ratio, retain_ratio) if is_number(retain_ratio) else retain_ratio
        if not is_seq(ratio) or len(ratio) != 2:
            raise ConfigError(
                f"RandomCenterCrop.retain_ratio must be [w, h] in [0, 1], got {retain_ratio!r}"
            )
        self.retain_ratio = tuple(
            number_arg(r, "RandomCenterCrop.retain_ratio", 0, 1) for r in ratio
        )

    def apply(self, image, label):
        rw, rh = self.retain_ratio
        h, w = image.shape[-2:]
        cut_w, cut_h = int(w * (1 - rw)), int(h * (1 - rh))
        if cut_w == 0 and cut_h == 0:
            return image, label
        cut_w, cut_h = random.randint(0, cut_w), random.randint(0, cut_h)
        left, top = random.randint(0, cut_w), random.randint(0, cut_h)
        # contiguous copies (see _window); .contiguous() drops the tv_tensor type: re-wrap
        out = F.crop(image, top, left, h - cut_h, w - cut_w)
        image = tv_tensors.wrap(out.contiguous(), like=image)
        if label is not None:
            out = F.crop(label, top, left, h - cut_h, w - cut_w)
            label = tv_tensors.wrap(out.contiguous(), like=label)
        return image, label


@TRANSFORMS.register()
class Padding(SegTransform):
    """Pad bottom/right to exactly ``target_size`` (w, h); a larger image is an error."""

    def __init__(
        self,
        target_size: int | Sequence[int] = (512, 512),
        im_padding_value: Fill = 127.5,
        label_padding_value: int = 255,
    ) -> None:
        self.target_size = size_arg(target_size, "Padding.target_size", _WH)
        self.im_padding_value = fill_arg(im_padding_value, "Padding.im_padding_value")
        self.label_padding_value = _label_fill(label_padding_value, "Padding.label_padding_value")

    def apply(self, image, label):
        tw, th = self.target_size
        h, w = image.shape[-2:]
        if h > th or w > tw:
            raise DataError(
                f"Padding: image {w}x{h} is larger than target_size {tw}x{th}; "
                "resize it first (e.g. ResizeByLong) or raise target_size"
            )
        if (h, w) == (th, tw):
            return image, label
        padding = [0, 0, tw - w, th - h]  # left, top, right, bottom
        image = F.pad(
            image,
            padding,
            fill=pixel_fill(self.im_padding_value, image, "Padding.im_padding_value"),
        )
        if label is not None:
            label = F.pad(label, padding, fill=self.label_padding_value)
        return image, label


# ----------------------------------------------------------------------------- warps


@TRANSFORMS.register()
class RandomRotation(SegTransform):
    """Rotate by a random angle in [-max_rotation, max_rotation] degrees, expanding the canvas.

    The corners the rotation uncovers get the padding values (label: ignore).
    """

    def __init__(
        self,
        max_rotation: float = 15,
        im_padding_value: Fill = 127.5,
        label_padding_value: int = 255,
    ) -> None:
        self.max_rotation = number_arg(max_rotation, "RandomRotation.max_rotation", 0, 180)
        self.im_padding_value = fill_arg(im_padding_value, "RandomRotation.im_padding_value")
        self.label_padding_value = _label_fill(
            label_padding_value, "RandomRotation.label_padding_value"
        )

    def apply(self, image, label):
        if self.max_rotation <= 0:
            return image, label
        angle = random.uniform(-self.max_rotation, self.max_rotation)
        fill = pixel_fill(self.im_padding_value, image, "RandomRotation.im_padding_value")
        image = F.rotate(image, angle, InterpolationMode.BILINEAR, expand=True, fill=fill)
        if label is not None:  # the Mask kernel samples nearest on the same grid
            label = F.rotate(label, angle, expand=True, fill=float(self.label_padding_value))
        return image, label


@TRANSFORMS.register()
class RandomScaleAspect(SegTransform):
    """Crop a random area (>= ``min_scale``) and aspect, then resize back to the input size.

    Up to 10 draws; if none fits inside the image the sample is left unchanged.
    """

    def __init__(self, min_scale: float = 0.5, aspect_ratio: float = 0.33) -> None:
        self.min_scale = number_arg(min_scale, "RandomScaleAspect.min_scale", 0, 1)
        self.aspect_ratio = number_arg(aspect_ratio, "RandomScaleAspect.aspect_ratio", 0, 1)

    def apply(self, image, label):
        if self.min_scale == 0 or self.aspect_ratio == 0:
            return image, label
        h, w = image.shape[-2:]
        for _ in range(10):
            area = h * w * random.uniform(self.min_scale, 1.0)
            aspect = random.uniform(self.aspect_ratio, 1.0 / self.aspect_ratio)
            dw, dh = int(math.sqrt(area * aspect)), int(math.sqrt(area / aspect))
            if random.random() < 0.5:
                dw, dh = dh, dw
            if 0 < dh < h and 0 < dw < w:
                top, left = random.randrange(0, h - dh), random.randrange(0, w - dw)
                image = F.crop(image, top, left, dh, dw)
                label = None if label is None else F.crop(label, top, left, dh, dw)
                return _resize(image, label, h, w)
        return image, label


# ----------------------------------------------------------------------------- photometric


@TRANSFORMS.register()
class RandomDistort(SegTransform):
    """Random brightness, contrast, saturation, hue and sharpness, in a random order.

    Each op runs with its ``*_prob`` and draws a factor in [1 - range, 1 + range]. Hue is
    shifted by a value in [-hue_range, hue_range] in PaddleSeg's units: PIL's 0..255 hue
    circle, so the default 18 is about +-25 degrees.
    """

    photometric = True

    def __init__(
        self,
        brightness_range: float = 0.5,
        brightness_prob: float = 0.5,
        contrast_range: float = 0.5,
        contrast_prob: float = 0.5,
        saturation_range: float = 0.5,
        saturation_prob: float = 0.5,
        hue_range: float = 18,
        hue_prob: float = 0.5,
        sharpness_range: float = 0.5,
        sharpness_prob: float = 0.0,
    ) -> None:
        name = "RandomDistort"
        self.brightness_range = number_arg(brightness_range, f"{name}.brightness_range", 0, 1)
        self.brightness_prob = prob_arg(brightness_prob, f"{name}.brightness_prob")
        self.contrast_range = number_arg(contrast_range, f"{name}.contrast_range", 0, 1)
        self.contrast_prob = prob_arg(contrast_prob, f"{name}.contrast_prob")
        self.saturation_range = number_arg(saturation_range, f"{name}.saturation_range", 0, 1)
        self.saturation_prob = prob_arg(saturation_prob, f"{name}.saturation_prob")
        self.hue_range = number_arg(hue_range, f"{name}.hue_range", 0, 128)
        self.hue_prob = prob_arg(hue_prob, f"{name}.hue_prob")
        self.sharpness_range = number_arg(sharpness_range, f"{name}.sharpness_range", 0, 1)
        self.sharpness_prob = prob_arg(sharpness_prob, f"{name}.sharpness_prob")
        self._ops: list[tuple[Callable[..., torch.Tensor], float, float, float]] = [
            (F.adjust_brightness, self.brightness_prob, 1.0, self.brightness_range),
            (F.adjust_contrast, self.contrast_prob, 1.0, self.contrast_range),
            (F.adjust_saturation, self.saturation_prob, 1.0, self.saturation_range),
            (_adjust_hue_paddle, self.hue_prob, 0.0, self.hue_range),
            (F.adjust_sharpness, self.sharpness_prob, 1.0, self.sharpness_range),
        ]

    def apply(self, image, label):
        ops = list(self._ops)
        random.shuffle(ops)
        for op, prob, center, spread in ops:
            if prob > 0 and random.random() < prob:
                image = op(image, random.uniform(center - spread, center + spread))
        return image, label


def _adjust_hue_paddle(image: torch.Tensor, delta: float) -> torch.Tensor:
    """PaddleSeg adds ``delta`` to PIL's uint8 hue channel: 256 units per full turn."""
    if delta == 0 or image.shape[-3] != 3:
        return image
    return tv_tensors.wrap(_rotate_hue(image.as_subclass(torch.Tensor), delta / 256.0), like=image)


_HUE_PHASE = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)  # R, G, B phases of the HSV->RGB formula


def _rotate_hue(image: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the HSV hue of a uint8 RGB image by ``turns`` of the colour circle.

    The same result as ``F.adjust_hue`` (within 1 level) at about a third of the cost: it
    skips the full HSV round trip, because a hue rotation keeps max, min and hence V and S.
    Uses ``channel = V - C * clamp(min(k, 4 - k), 0, 1)``, ``k = (phase + H) mod 6``.
    """
    x = image.to(torch.float32)  # (3,H,W) in 0..255
    r, g, b = x.unbind(0)
    mx = torch.maximum(torch.maximum(r, g), b)  # (H,W) = V
    chroma = mx - torch.minimum(torch.minimum(r, g), b)  # (H,W) = C
    inv = torch.where(chroma > 0, chroma, 1.0).reciprocal_()
    # hue in sextants, in (-1, 5]; grey pixels (C = 0) get any hue, their output is V anyway
    hue = torch.where(
        r == mx,
        (g - b).mul_(inv),
        torch.where(g == mx, (b - r).mul_(inv).add_(2.0), (r - g).mul_(inv).add_(4.0)),
    )
    k = hue.add_(6.0 * turns + 6.0).unsqueeze(0) + _HUE_PHASE  # (3,H,W), all > 0
    k.sub_(k.div(6.0).floor_().mul_(6.0))  # mod 6
    weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)  # min(k, 4 - k) in [0, 1]
    return torch.addcmul(mx, chroma, weight, value=-1.0).round_().to(image.dtype)


@TRANSFORMS.register()
class RandomBlur(SegTransform):
    """Blur with probability ``prob`` with a random odd kernel of 3..9 pixels.

    ``blur_type``: gaussian (sigma from the kernel size, as OpenCV), median, blur (box
    filter) or random (one of the three per sample). Borders are reflected.
    """

    photometric = True
    _TYPES = ("gaussian", "median", "blur", "random")

    def __init__(self, prob: float = 0.1, blur_type: str = "gaussian") -> None:
        self.prob = prob_arg(prob, "RandomBlur.prob")
        if blur_type not in self._TYPES:
            raise ConfigError(
                f"RandomBlur.blur_type '{blur_type}' is not one of {', '.join(self._TYPES)}"
            )
        self.blur_type = blur_type

    def apply(self, image, label):
        if not (self.prob > 0 and random.random() < self.prob):
            return image, label
        k = random.randint(3, 9) | 1  # odd: 3, 5, 7 or 9
        kind = self.blur_type
        if kind == "random":
            kind = random.choice(self._TYPES[:3])
        if kind == "gaussian":
            return F.gaussian_blur(image, [k, k]), label
        # (3,H,W) -> (1,3,H+k-1,W+k-1) reflected, as float for the pooling ops
        x = nnf.pad(image.as_subclass(torch.Tensor)[None].float(), [k // 2] * 4, mode="reflect")
        if kind == "blur":
            x = nnf.avg_pool2d(x, k, stride=1)[0]
        else:  # median: (3,H,W,k,k) windows -> (3,H,W,k*k) -> median
            x = x[0].unfold(1, k, 1).unfold(2, k, 1).flatten(-2).median(dim=-1).values
        return tv_tensors.wrap(x.round_().to(image.dtype), like=image), label


@TRANSFORMS.register()
class RandomNoise(SegTransform):
    """Add Gaussian noise with sigma ~ U(0, max_sigma) (0..255 units) with probability ``prob``."""

    photometric = True

    def __init__(self, prob: float = 0.5, max_sigma: float = 10.0) -> None:
        self.prob = prob_arg(prob, "RandomNoise.prob")
        self.max_sigma = number_arg(max_sigma, "RandomNoise.max_sigma", 0)

    def apply(self, image, label):
        if not (self.prob > 0 and random.random() < self.prob):
            return image, label
        sigma = random.random() * self.max_sigma
        if sigma == 0:
            return image, label
        x = torch.randn(image.shape).mul_(sigma).add_(image.as_subclass(torch.Tensor))
        return tv_tensors.wrap(x.round_().clamp_(0, 255).to(torch.uint8), like=image), label


# ----------------------------------------------------------------------------- normalize


@TRANSFORMS.register()
class Normalize(SegTransform):
    """uint8 -> float32 ``(x / 255 - mean) / std``, mean/std in 0..1 units (PaddleSeg).

    Values above 1 (e.g. ImageNet's 123.675/58.395) are read as 0..255 units. This is the
    last transform: it ends the uint8 part of the pipeline.
    """

    def __init__(
        self,
        mean: float | Sequence[float] = (0.5, 0.5, 0.5),
        std: float | Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        mean_t, std_t = fill_arg(mean, "Normalize.mean"), fill_arg(std, "Normalize.std")
        if len(mean_t) != len(std_t) and 1 not in (len(mean_t), len(std_t)):
            raise ConfigError(f"Normalize.mean has {len(mean_t)} values but std has {len(std_t)}")
        if any(s <= 0 for s in std_t):
            raise ConfigError(f"Normalize.std must be positive, got {list(std_t)}")
        self.mean, self.std = mean_t, std_t
        unit = 255.0 if max(*mean_t, *std_t) > 1.0 else 1.0  # 0..255 units given
        mean_u = torch.tensor(mean_t, dtype=torch.float32) / unit
        std_u = torch.tensor(std_t, dtype=torch.float32) / unit
        mean_u, std_u = torch.broadcast_tensors(mean_u, std_u)
        # (x / 255 - mean) / std == x * scale + shift, per channel: (C,) -> (C,1,1)
        self._scale = (1.0 / (255.0 * std_u)).view(-1, 1, 1)
        self._shift = (-mean_u / std_u).view(-1, 1, 1)

    def apply(self, image, label):
        if image.dtype != torch.uint8:
            raise DataError(
                f"Normalize needs a uint8 image, got {image.dtype} (is Normalize listed twice?)"
            )
        c = image.shape[-3]
        if self._scale.shape[0] not in (1, c):
            raise DataError(
                f"Normalize has {self._scale.shape[0]} mean/std values for a {c}-channel image"
            )
        x = image.as_subclass(torch.Tensor).to(torch.float32)
        x = torch.addcmul(self._shift, x, self._scale)
        return tv_tensors.wrap(x, like=image), label


# ----------------------------------------------------------------------------- pipeline


class Compose:
    """Apply transforms in order; photometric ones must come before ``Normalize``."""

    def __init__(self, transforms: list[Callable[[Sample], Sample]]) -> None:
        check_uint8_order(transforms, Normalize, "photometric")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"


def build_transforms(
    specs: Sequence[dict[str, Any] | Callable[[Sample], Sample]] | None,
) -> Compose:
    """A :class:`Compose` from PaddleSeg-style ``[{"type": name, **kwargs}, ...]``.

    Built transforms (callables) may be mixed in; ``None`` is an empty pipeline.
    """
    if specs is None:
        return Compose([])
    if isinstance(specs, (dict, str)) or not isinstance(specs, Sequence):
        raise ConfigError(f"transforms must be a list of {{type: ...}} entries, got {specs!r}")
    built = []
    for i, spec in enumerate(specs):
        if callable(spec):
            built.append(spec)
            continue
        if not isinstance(spec, (dict, str)):
            raise ConfigError(f"transforms[{i}] must be a {{type: ...}} mapping, got {spec!r}")
        try:
            built.append(TRANSFORMS.build(spec))
        except ConfigError as exc:
            raise ConfigError(f"transforms[{i}]: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"transforms[{i}] {spec!r}: {exc}") from None
    return Compose(built)
