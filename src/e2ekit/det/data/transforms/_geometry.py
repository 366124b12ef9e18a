"""Geometric det transforms: flips, resizes, crops, zoom-out, padding and box clean-up.

Each moves the image and its boxes through the same torchvision v2 functional op (tv_tensors
pick the kernel), so boxes stay on their objects; instance masks (``tv_tensors.Mask``) go
through the same op (nearest, zero fill); boxes that leave the image are dropped with their
per-box values and masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import box_area, box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.transform_args import (
    fill_arg,
    interp_arg,
    is_seq,
    number_arg,
    pixel_fill,
    prob_arg,
    range_arg,
    size_arg,
    sizes_arg,
)
from e2ekit.det.data.transforms._base import (
    HW,
    INTERP,
    MASKS,
    DetTransform,
    Sample,
    keep_boxes,
    plain,
    rand,
    randint,
    uniform,
)
from e2ekit.det.registry import TRANSFORMS

#: RandomExpand's default canvas colour: the ImageNet mean in 0..255 units.
IMAGENET_MEAN_PIXELS = (123.675, 116.28, 103.53)


def resize_sample(
    sample: Sample, height: int, width: int, interp: str, record: bool = True
) -> Sample:
    """Resize image and boxes to (height, width); boxes scale by new/old per axis exactly.

    With ``record``, ``scale_factor`` ([sy, sx], float32) is multiplied by this resize's
    factors, so after the eval pipeline's one Resize it maps predictions back to the input.
    """
    image = sample["image"]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    height, width = max(1, int(height)), max(1, int(width))
    if (height, width) != (h, w):
        mode = INTERP[interp]
        antialias = mode != InterpolationMode.NEAREST
        sample["image"] = F.resize(image, [height, width], interpolation=mode, antialias=antialias)
        if sample.get("boxes") is not None:
            sample["boxes"] = F.resize(sample["boxes"], [height, width])
        if sample.get(MASKS) is not None:  # a Mask resizes with nearest: stays 0/1
            sample[MASKS] = F.resize(sample[MASKS], [height, width])
    if record:
        factor = torch.tensor([height / h, width / w], dtype=torch.float32)
        if sample.get("scale_factor") is not None:
            factor = torch.as_tensor(sample["scale_factor"], dtype=torch.float32) * factor
        sample["scale_factor"] = factor
    return sample


def keep_ratio_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """PaddleDetection's keep_ratio: short side to min(target) unless the long side would
    pass max(target): scale = min(min(t) / min(h, w), max(t) / max(h, w))."""
    scale = min(min(target) / min(h, w), max(target) / max(h, w))
    return max(1, int(scale * h + 0.5)), max(1, int(scale * w + 0.5))


def pad_to(sample: Sample, th: int, tw: int, fill: Sequence[float], what: str) -> Sample:
    """Pad bottom/right to (th, tw) with ``fill`` (``what`` names it in errors); boxes keep
    their coordinates."""
    image = sample["image"]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if (th, tw) == (h, w):
        return sample
    padding = [0, 0, tw - w, th - h]  # left, top, right, bottom
    sample["image"] = F.pad(image, padding, fill=pixel_fill(fill, image, what))
    if sample.get("boxes") is not None:
        sample["boxes"] = F.pad(sample["boxes"], padding)  # no shift: only the canvas grows
    if sample.get(MASKS) is not None:
        sample[MASKS] = F.pad(sample[MASKS], padding, fill=0)
    return sample


@TRANSFORMS.register()
class RandomFlip(DetTransform):
    """Mirror left-right with probability ``prob``: x1' = W - x2, x2' = W - x1."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob_arg(prob, "RandomFlip.prob")

    def apply(self, sample):
        if self.prob > 0 and rand() < self.prob:
            sample["image"] = F.horizontal_flip(sample["image"])
            if sample.get("boxes") is not None:
                sample["boxes"] = F.horizontal_flip(sample["boxes"])
            if sample.get(MASKS) is not None:
                sample[MASKS] = F.horizontal_flip(sample[MASKS])
        return sample


@TRANSFORMS.register()
class Resize(DetTransform):
    """Resize to ``target_size`` [h, w]; with ``keep_ratio`` (the default, as in
    PaddleDetection) scale both sides by min(min(t)/min(h,w), max(t)/max(h,w)).

    Records ``scale_factor`` ([sy, sx]) in the sample for mapping predictions back.
    """

    def __init__(
        self, target_size: int | Sequence[int] = 640, keep_ratio: bool = True, interp: Any = 1
    ) -> None:
        self.target_size = size_arg(target_size, "Resize.target_size", HW)
        self.keep_ratio = bool(keep_ratio)
        self.interp = interp_arg(interp, "Resize.interp", INTERP)

    def apply(self, sample):
        h, w = sample["image"].shape[-2:]
        size = keep_ratio_size(h, w, self.target_size) if self.keep_ratio else self.target_size
        return resize_sample(sample, *size, self.interp)


@TRANSFORMS.register()
class RandomResize(DetTransform):
    """Resize to a size drawn per sample from ``target_size`` (multi-scale training).

    With ``random_range`` the sizes are two [short, long] pairs and the short and long edge
    are drawn as ints between them (PaddleDetection); otherwise one entry is chosen.
    ``random_interp`` also draws the interpolation. For YOLO-style multi-scale, where every
    image of a batch gets the same size, use :class:`BatchRandomResize` instead.
    """

    def __init__(
        self,
        target_size: Sequence[Any] = (640,),
        keep_ratio: bool = True,
        interp: Any = 1,
        random_range: bool = False,
        random_interp: bool = False,
    ) -> None:
        self.target_size = sizes_arg(target_size, "RandomResize.target_size", HW)
        self.keep_ratio = bool(keep_ratio)
        self.interp = interp_arg(interp, "RandomResize.interp", INTERP)
        self.random_range = bool(random_range)
        self.random_interp = bool(random_interp)
        if self.random_range and len(self.target_size) < 2:
            raise ConfigError(
                "RandomResize.random_range needs target_size as two [short, long] sizes"
            )

    def _draw(self) -> tuple[int, int]:
        if self.random_range:
            longs = [max(s) for s in self.target_size]
            shorts = [min(s) for s in self.target_size]
            return randint(min(shorts), max(shorts)), randint(min(longs), max(longs))
        return self.target_size[randint(0, len(self.target_size) - 1)]

    def apply(self, sample):
        target = self._draw()
        interp = self.interp
        if self.random_interp:
            names = list(INTERP)
            interp = names[randint(0, len(names) - 1)]
        h, w = sample["image"].shape[-2:]
        size = keep_ratio_size(h, w, target) if self.keep_ratio else target
        return resize_sample(sample, *size, interp)


@TRANSFORMS.register()
class RandomCrop(DetTransform):
    """SSD-style crop with IoU constraints (the semantics of ``v2.RandomIoUCrop``).

    The thresholds (plus "no crop" when ``allow_no_crop``) are tried in a random order; for
    each up to ``num_attempts`` crops are drawn (side scale in ``scaling``, aspect in
    ``aspect_ratio``) until one has overlap >= threshold with some box (with all boxes when
    ``cover_all_box``) and contains at least one box centre. Boxes whose centre lies outside
    the crop are dropped with their labels, the rest are clipped to it. ``ioumode`` 'iof'
    measures overlap as intersection / box area. A sample without boxes, or where nothing
    fits, is returned unchanged (bounded: never loops forever, unlike RandomIoUCrop).
    """

    def __init__(
        self,
        aspect_ratio: Sequence[float] | None = (0.5, 2.0),
        thresholds: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
        scaling: Sequence[float] = (0.3, 1.0),
        num_attempts: int = 50,
        allow_no_crop: bool = True,
        cover_all_box: bool = False,
        ioumode: str = "iou",
    ) -> None:
        self.aspect_ratio = (
            None if aspect_ratio is None else range_arg(aspect_ratio, "RandomCrop.aspect_ratio", 0)
        )
        if self.aspect_ratio is not None and self.aspect_ratio[0] <= 0:
            raise ConfigError(f"RandomCrop.aspect_ratio must be positive, got {aspect_ratio!r}")
        if not is_seq(thresholds) or len(thresholds) == 0:
            raise ConfigError(
                f"RandomCrop.thresholds must be a list of numbers, got {thresholds!r}"
            )
        self.thresholds = [
            number_arg(t, f"RandomCrop.thresholds[{i}]", 0, 1) for i, t in enumerate(thresholds)
        ]
        self.scaling = range_arg(scaling, "RandomCrop.scaling", 0, 1)
        if self.scaling[0] <= 0:
            raise ConfigError(f"RandomCrop.scaling must be in (0, 1], got {scaling!r}")
        self.num_attempts = int(number_arg(num_attempts, "RandomCrop.num_attempts", 1))
        self.allow_no_crop = bool(allow_no_crop)
        self.cover_all_box = bool(cover_all_box)
        if ioumode not in ("iou", "iof"):
            raise ConfigError(f"RandomCrop.ioumode must be 'iou' or 'iof', got {ioumode!r}")
        self.ioumode = ioumode

    def _draw_crop(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        scale = uniform(*self.scaling)
        if self.aspect_ratio is not None:
            lo = max(self.aspect_ratio[0], scale**2)
            hi = min(self.aspect_ratio[1], scale**-2)
            ratio = uniform(lo, hi) if lo <= hi else 1.0
            h_scale, w_scale = scale / math.sqrt(ratio), scale * math.sqrt(ratio)
        else:
            h_scale, w_scale = scale, uniform(*self.scaling)
        ch, cw = min(h, int(h * h_scale)), min(w, int(w * w_scale))
        if ch < 1 or cw < 1:
            return None
        if self.aspect_ratio is None and not 0.5 <= ch / cw <= 2.0:
            return None
        return randint(0, h - ch), randint(0, w - cw), ch, cw

    def apply(self, sample):
        boxes = sample.get("boxes")
        if boxes is None or len(boxes) == 0:
            return sample
        h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
        b = plain(boxes)
        centres = (b[:, :2] + b[:, 2:]) / 2
        options: list[float | None] = [*self.thresholds, *([None] if self.allow_no_crop else [])]
        for i in torch.randperm(len(options)).tolist():
            thresh = options[i]
            if thresh is None:
                return sample
            for _ in range(self.num_attempts):
                crop = self._draw_crop(h, w)
                if crop is None:
                    continue
                top, left, ch, cw = crop
                crop_box = torch.tensor([[left, top, left + cw, top + ch]], dtype=torch.float32)
                if self.ioumode == "iou":
                    overlap = box_iou(b, crop_box)[:, 0]
                else:
                    lo = torch.maximum(b[:, :2], crop_box[:, :2])
                    inter = (torch.minimum(b[:, 2:], crop_box[:, 2:]) - lo).clamp(min=0).prod(1)
                    overlap = inter / box_area(b).clamp(min=1e-6)
                if overlap.max() < thresh or (self.cover_all_box and overlap.min() < thresh):
                    continue
                inside = ((centres >= crop_box[:, :2]) & (centres < crop_box[:, 2:])).all(dim=1)
                if not inside.any():
                    continue
                sample["image"] = F.crop(sample["image"], top, left, ch, cw)
                sample["boxes"] = F.crop(boxes, top, left, ch, cw)  # shifted and clipped
                if sample.get(MASKS) is not None:
                    sample[MASKS] = F.crop(sample[MASKS], top, left, ch, cw)
                cropped = plain(sample["boxes"])
                inside &= (cropped[:, 2:] > cropped[:, :2]).all(dim=1)
                return keep_boxes(sample, inside)
        return sample


@TRANSFORMS.register()
class RandomExpand(DetTransform):
    """Zoom out (``v2.RandomZoomOut``): with probability ``prob`` place the image at a random
    spot of a canvas ``r`` times its size, ``r ~ U(1, ratio)``, filled with ``fill_value``
    (the ImageNet mean in pixels by default). Boxes shift with the image."""

    uint8_only = True

    def __init__(
        self,
        ratio: float = 4.0,
        prob: float = 0.5,
        fill_value: float | Sequence[float] = IMAGENET_MEAN_PIXELS,
    ) -> None:
        self.ratio = number_arg(ratio, "RandomExpand.ratio", 1.0)
        self.prob = prob_arg(prob, "RandomExpand.prob")
        self.fill_value = fill_arg(fill_value, "RandomExpand.fill_value")
        fill = [float(min(max(round(v), 0), 255)) for v in self.fill_value]
        self._op = v2.RandomZoomOut(
            fill={tv_tensors.Image: fill, "others": 0},
            side_range=(1.0, self.ratio),
            p=self.prob,
        )

    def apply(self, sample):
        if self.prob == 0 or self.ratio == 1.0:
            return sample
        image = sample["image"]
        if len(self.fill_value) not in (1, image.shape[-3]):
            raise DataError(
                f"RandomExpand.fill_value has {len(self.fill_value)} values for a "
                f"{image.shape[-3]}-channel image"
            )
        if sample.get("boxes") is None:
            sample["image"] = self._op(image)
        elif sample.get(MASKS) is not None:  # one call: the same canvas and offset for all
            sample["image"], sample["boxes"], sample[MASKS] = self._op(
                image, sample["boxes"], sample[MASKS]
            )
        else:
            sample["image"], sample["boxes"] = self._op(image, sample["boxes"])
        return sample


@TRANSFORMS.register()
class Pad(DetTransform):
    """Pad bottom/right to ``size`` [h, w] or, without it, to multiples of
    ``size_divisor``; boxes are unchanged. Registered also as ``PadToSize``."""

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        size_divisor: int = 32,
        fill_value: float | Sequence[float] = 0.0,
    ) -> None:
        self.size = None if size is None else size_arg(size, "Pad.size", HW)
        self.size_divisor = int(number_arg(size_divisor, "Pad.size_divisor", 1))
        self.fill_value = fill_arg(fill_value, "Pad.fill_value")

    def apply(self, sample):
        image = sample["image"]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if self.size is not None:
            th, tw = self.size
            if h > th or w > tw:
                raise DataError(f"Pad: the image ({h}x{w}) is larger than Pad.size ({th}x{tw})")
        else:
            d = self.size_divisor
            th, tw = -(-h // d) * d, -(-w // d) * d
        return pad_to(sample, th, tw, self.fill_value, "Pad.fill_value")


@TRANSFORMS.register()
class SanitizeBoxes(DetTransform):
    """Clip boxes to the image, then drop boxes narrower/shorter than ``min_size`` or with
    area below ``min_area`` together with their labels (``v2.SanitizeBoundingBoxes``)."""

    def __init__(self, min_size: float = 1.0, min_area: float = 1.0) -> None:
        self.min_size = number_arg(min_size, "SanitizeBoxes.min_size", 0)
        self.min_area = number_arg(min_area, "SanitizeBoxes.min_area", 0)

    def apply(self, sample):
        boxes = sample.get("boxes")
        if boxes is None or len(boxes) == 0:
            return sample
        boxes = F.clamp_bounding_boxes(boxes, clamping_mode="hard")
        _, valid = F.sanitize_bounding_boxes(boxes, min_size=self.min_size, min_area=self.min_area)
        sample["boxes"] = boxes
        return keep_boxes(sample, valid)


TRANSFORMS.register("PadToSize")(Pad)
