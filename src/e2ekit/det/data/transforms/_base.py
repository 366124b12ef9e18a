"""The sample contract every det transform keeps, and the base class that checks it.

:func:`prepare` turns whatever a dataset or user hands in into the one form the transforms
work on (an Image, XYXY float32 BoundingBoxes on its canvas, per-box tensors of one length),
so each transform only has to keep boxes and their per-box values in step
(:func:`keep_boxes`). Randomness goes through torch's global generator, which the engine seeds
per worker and sample.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

from e2ekit.core.errors import DataError
from e2ekit.det.registry import TRANSFORMS

Sample = dict[str, Any]

#: Keys holding one value per box; indexed together with ``boxes``.
PER_BOX_KEYS = ("labels", "scores", "iscrowd", "difficult")

#: Instance masks, uint8 (N,H,W) ``tv_tensors.Mask`` on the image's canvas: one per box,
#: indexed with ``boxes`` and moved by every geometric transform (nearest, never blended).
MASKS = "masks"

XYXY = tv_tensors.BoundingBoxFormat.XYXY

#: Sizes are written [height, width], as in PaddleDetection.
HW = "height, width"

#: OpenCV interpolation names (PaddleDetection configs) -> torchvision modes.
INTERP = {
    "NEAREST": InterpolationMode.NEAREST,
    "LINEAR": InterpolationMode.BILINEAR,
    "CUBIC": InterpolationMode.BICUBIC,
    "AREA": InterpolationMode.BILINEAR,  # with antialias: torchvision's area-like mode
    "LANCZOS4": InterpolationMode.BICUBIC,  # no Lanczos kernel for tensors
}


# ----------------------------------------------------------------------------- RNG


def rand() -> float:
    return float(torch.rand(()))


def uniform(low: float, high: float) -> float:
    return low + (high - low) * rand()


def randint(low: int, high: int) -> int:
    """An int in [low, high] (both inclusive)."""
    return int(torch.randint(low, high + 1, ()))


# ----------------------------------------------------------------------------- samples


def prepare(sample: Any, who: str) -> Sample:
    """A shallow copy with ``image`` an Image, ``boxes`` XYXY float32 BoundingBoxes on the
    image's canvas and the per-box keys as tensors of the same length; raises DataError."""
    if not isinstance(sample, dict) or "image" not in sample:
        keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise DataError(f"{who}: a sample must be a dict with an 'image', got {keys}")
    out = dict(sample)
    image = sample["image"]
    if isinstance(image, np.ndarray):
        raise DataError(f"{who}: 'image' must be a (3,H,W) tensor, got a numpy array")
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DataError(f"{who}: 'image' must be a (C,H,W) tensor, got {shape}")
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    out["image"] = image
    canvas = (int(image.shape[-2]), int(image.shape[-1]))
    boxes = sample.get("boxes")
    if boxes is None:
        return out
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        if boxes.format != XYXY:
            boxes = F.convert_bounding_box_format(boxes, new_format=XYXY)
        if tuple(boxes.canvas_size) != canvas:
            raise DataError(
                f"{who}: boxes.canvas_size {tuple(boxes.canvas_size)} != image size {canvas}"
            )
        if boxes.dtype != torch.float32:
            boxes = tv_tensors.wrap(boxes.to(torch.float32), like=boxes)
    else:
        t = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes)
        if t.numel() == 0:
            t = t.reshape(0, 4)
        if t.ndim != 2 or t.shape[1] != 4:
            raise DataError(f"{who}: 'boxes' must be (N, 4) xyxy, got {tuple(t.shape)}")
        boxes = tv_tensors.BoundingBoxes(t.to(torch.float32), format=XYXY, canvas_size=canvas)
    out["boxes"] = boxes
    n = boxes.shape[0]
    if "labels" not in sample:
        raise DataError(f"{who}: the sample has 'boxes' but no 'labels'")
    for key in PER_BOX_KEYS:
        if key in sample and sample[key] is not None:
            value = sample[key]
            value = torch.as_tensor(
                np.asarray(value) if not isinstance(value, torch.Tensor) else value
            )
            if value.ndim == 0 or value.shape[0] != n:
                raise DataError(f"{who}: '{key}' has {tuple(value.shape)} values for {n} boxes")
            out[key] = value
    if out["labels"].dtype != torch.int64:
        out["labels"] = out["labels"].to(torch.int64)
    if sample.get(MASKS) is not None:
        out[MASKS] = prepare_masks(sample[MASKS], canvas, n, who)
    return out


def prepare_masks(masks: Any, canvas: tuple[int, int], n: int, who: str) -> tv_tensors.Mask:
    """``masks`` as a uint8 (n, H, W) Mask on ``canvas``; raises DataError naming ``who``."""
    if isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8:
        t = masks
    else:
        arr = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
        t = tv_tensors.Mask(arr.as_subclass(torch.Tensor).to(torch.uint8))
    if t.ndim != 3 or t.shape[0] != n or tuple(t.shape[-2:]) != canvas:
        raise DataError(
            f"{who}: 'masks' must be (N, H, W) = ({n}, {canvas[0]}, {canvas[1]}), one per box "
            f"on the image's canvas, got {tuple(t.shape)}"
        )
    return t


def keep_boxes(sample: Sample, mask: torch.Tensor) -> Sample:
    """Keep the boxes (and their per-box values) where ``mask`` is true."""
    boxes = sample["boxes"]
    sample["boxes"] = tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[mask], like=boxes)
    for key in PER_BOX_KEYS:
        if key in sample and sample[key] is not None:
            sample[key] = sample[key][mask]
    if sample.get(MASKS) is not None:
        masks = sample[MASKS]
        sample[MASKS] = tv_tensors.wrap(masks.as_subclass(torch.Tensor)[mask], like=masks)
    return sample


def plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


# ----------------------------------------------------------------------------- base


class DetTransform:
    """Base: check/wrap the sample (:func:`prepare`), then :meth:`apply` to a copy."""

    #: fills or blends pixel values in 0..255 units: must come before Normalize
    uint8_only: ClassVar[bool] = False

    def __call__(self, sample: Sample) -> Sample:
        name = type(self).__name__
        sample = prepare(sample, name)
        if self.uint8_only and sample["image"].dtype != torch.uint8:
            raise DataError(
                f"{name} needs a uint8 image, got {sample['image'].dtype}; put it before Normalize"
            )
        return self.apply(sample)

    def apply(self, sample: Sample) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names if hasattr(self, n))
        return f"{type(self).__name__}({args})"


@TRANSFORMS.register()
class Decode(DetTransform):
    """No-op kept so PaddleDetection configs build: the dataset already decodes images."""

    def apply(self, sample):
        return sample


@TRANSFORMS.register()
class Permute(DetTransform):
    """No-op kept so PaddleDetection configs build: images are (C,H,W) tensors already."""

    def apply(self, sample):
        return sample
