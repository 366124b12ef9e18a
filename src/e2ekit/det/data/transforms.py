"""PaddleDetection-style augmentations that keep an image and its boxes aligned.

A transform is a callable ``t(sample) -> sample`` on a dict::

    {"image": tv_tensors.Image uint8 (3,H,W),          # float32 after Normalize
     "boxes": tv_tensors.BoundingBoxes XYXY float32 (N,4), absolute pixels, canvas (H,W),
     "labels": int64 (N,), ...}

Other keys (``image_id``, ``orig_size``, ...) pass through unchanged. Per-box keys
(``labels`` and, when present, ``scores``, ``iscrowd``, ``difficult``) are indexed together
with ``boxes`` whenever boxes are dropped, so they never go out of step. ``boxes`` may be
absent (inference); plain tensors or numpy arrays are accepted and wrapped on the way in.
The input dict is never modified in place.

Transforms are registered in :data:`DET_TRANSFORMS` under the names a PaddleDetection user
writes in ``sample_transforms`` (``RandomFlip``, ``Resize``, ``RandomResize``,
``RandomCrop``, ``RandomExpand``, ``RandomDistort``, ``Mixup``, ``Mosaic``,
``NormalizeImage``/``Normalize``, ``Pad``/``PadToSize``, ``SanitizeBoxes``; ``Decode`` and
``Permute`` are accepted as no-ops) and :func:`build_transforms` builds a list of
``{type: Name, **kwargs}`` or PaddleDetection's ``{Name: {kwargs}}`` entries. Batch
transforms (``BatchRandomResize``, ``PadBatch``) live in :data:`DET_BATCH_TRANSFORMS`, run
on the list of samples of one batch inside :class:`DetCollate`, and end in
:func:`pad_collate`.

Conventions (PaddleDetection's, except where noted):

* sizes (``target_size``) are ``[height, width]`` or one int for a square;
* ``interp`` is an OpenCV code (0 NEAREST, 1 LINEAR, 2 CUBIC, 3 AREA, 4 LANCZOS4) or its
  name; AREA is antialiased bilinear and LANCZOS4 bicubic (torch has no tensor Lanczos);
* probabilities are the chance the op *is applied* (PaddleDetection's RandomExpand and
  RandomDistort use the opposite convention in places);
* pixel values (fills) are 0..255 units; everything that fills or blends pixels works on
  uint8 and must come before ``Normalize`` (:class:`Compose` checks the order).

Mixing several images (Mosaic, Mixup): a :class:`MixTransform` is an ordinary entry of the
list, as in PaddleDetection, but it is called as ``t(sample, sample_fn)``, where
``sample_fn()`` returns another *raw* sample of the dataset (a random one).
:class:`Compose` passes each extra sample through the transforms listed *before* the mix
transform (mix transforms skipped, so nothing recurses) before mixing, so all inputs of a
mix have had the same preprocessing. :class:`TransformDataset` wraps any dataset of raw
sample dicts and supplies ``sample_fn`` (a random index drawn from torch's RNG). Without a
``sample_fn`` a mix transform raises a :class:`DataError` that says so.

All randomness comes from torch's global generator (the engine seeds it per worker and
sample), so a seeded pipeline is reproducible.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_area, box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

from e2ekit.core.errors import ConfigError, DataError, did_you_mean
from e2ekit.core.registry import Registry
from e2ekit.core.transform_order import check_uint8_order

__all__ = [
    "DET_BATCH_TRANSFORMS",
    "DET_TRANSFORMS",
    "PER_BOX_KEYS",
    "BatchCompose",
    "BatchRandomResize",
    "Compose",
    "Decode",
    "DetCollate",
    "DetTransform",
    "MixTransform",
    "Mixup",
    "Mosaic",
    "Normalize",
    "Pad",
    "PadBatch",
    "Permute",
    "RandomCrop",
    "RandomDistort",
    "RandomExpand",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "SanitizeBoxes",
    "TransformDataset",
    "build_batch_transforms",
    "build_transforms",
    "pad_collate",
]

Sample = dict[str, Any]

#: Per-sample transforms by PaddleDetection name.
DET_TRANSFORMS: Registry[Any] = Registry("transform")
#: Per-batch transforms (``list[Sample] -> list[Sample]``), applied in :class:`DetCollate`.
DET_BATCH_TRANSFORMS: Registry[Any] = Registry("batch transform")

#: Keys holding one value per box; indexed together with ``boxes``.
PER_BOX_KEYS = ("labels", "scores", "iscrowd", "difficult")

_XYXY = tv_tensors.BoundingBoxFormat.XYXY

# OpenCV interpolation codes/names (PaddleDetection configs) -> torchvision modes.
_INTERP = {
    "NEAREST": InterpolationMode.NEAREST,
    "LINEAR": InterpolationMode.BILINEAR,
    "CUBIC": InterpolationMode.BICUBIC,
    "AREA": InterpolationMode.BILINEAR,  # with antialias: torchvision's area-like mode
    "LANCZOS4": InterpolationMode.BICUBIC,  # no Lanczos kernel for tensors
}
_CV2_CODES = {0: "NEAREST", 1: "LINEAR", 2: "CUBIC", 3: "AREA", 4: "LANCZOS4"}

IMAGENET_MEAN_PIXELS = (123.675, 116.28, 103.53)


# ----------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _number(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    if not _is_number(value) or math.isnan(value):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{what} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def _prob(value: Any, what: str) -> float:
    return _number(value, what, 0.0, 1.0)


def _is_seq(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _size_hw(value: Any, what: str) -> tuple[int, int]:
    """An int or a [height, width] pair of positive ints, as PaddleDetection writes sizes."""
    if _is_int(value):
        value = (value, value)
    if not _is_seq(value) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"{what} must be a positive int or [height, width], got {value!r}")
    return int(value[0]), int(value[1])


def _sizes(value: Any, what: str) -> list[tuple[int, int]]:
    """A non-empty list of sizes (each an int or [h, w])."""
    if not _is_seq(value) or len(value) == 0:
        raise ConfigError(
            f"{what} must be a non-empty list of sizes (int or [h, w]), got {value!r}"
        )
    return [_size_hw(v, f"{what}[{i}]") for i, v in enumerate(value)]


def _range(value: Any, what: str, low: float | None = None, high: float | None = None):
    """A [low, high] pair of numbers with low <= high."""
    if not _is_seq(value) or len(value) != 2:
        raise ConfigError(f"{what} must be [low, high], got {value!r}")
    lo = _number(value[0], f"{what}[0]", low, high)
    hi = _number(value[1], f"{what}[1]", low, high)
    if lo > hi:
        raise ConfigError(f"{what} must be [low, high] with low <= high, got {value!r}")
    return lo, hi


def _fill(value: Any, what: str) -> tuple[float, ...]:
    """A fill colour: one number for every channel or one per channel (0..255 units)."""
    values = [value] if _is_number(value) else value
    if not _is_seq(values) or len(values) == 0 or not all(_is_number(v) for v in values):
        raise ConfigError(f"{what} must be a number or a list of numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _interp(value: Any, what: str) -> str:
    """An OpenCV code or name -> the name (a key of ``_INTERP``)."""
    if _is_int(value) and int(value) in _CV2_CODES:
        return _CV2_CODES[int(value)]
    if isinstance(value, str):
        name = value.upper().removeprefix("CV2.").removeprefix("INTER_")
        if name == "BILINEAR":
            name = "LINEAR"
        if name in _INTERP:
            return name
        hint = did_you_mean(name, _INTERP)
    else:
        hint = ""
    raise ConfigError(
        f"{what} {value!r} is not supported{hint}; use an OpenCV code 0-4 or one of "
        f"{', '.join(_INTERP)}"
    )


# ----------------------------------------------------------------------------- RNG


def _rand() -> float:
    return float(torch.rand(()))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * _rand()


def _randint(low: int, high: int) -> int:
    """An int in [low, high] (both inclusive)."""
    return int(torch.randint(low, high + 1, ()))


# ----------------------------------------------------------------------------- sample helpers


def _prepare(sample: Any, who: str) -> Sample:
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
        if boxes.format != _XYXY:
            boxes = F.convert_bounding_box_format(boxes, new_format=_XYXY)
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
        boxes = tv_tensors.BoundingBoxes(t.to(torch.float32), format=_XYXY, canvas_size=canvas)
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
    return out


def _keep(sample: Sample, mask: torch.Tensor) -> Sample:
    """Keep the boxes (and their per-box values) where ``mask`` is true."""
    boxes = sample["boxes"]
    sample["boxes"] = tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[mask], like=boxes)
    for key in PER_BOX_KEYS:
        if key in sample and sample[key] is not None:
            sample[key] = sample[key][mask]
    return sample


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


def _round_fill(fill: Sequence[float], image: torch.Tensor) -> list[float]:
    """Fill values broadcast to the image's channels, rounded and clipped for uint8."""
    channels = image.shape[-3]
    values = list(fill) * channels if len(fill) == 1 else list(fill)
    if len(values) != channels:
        raise DataError(f"a fill of {len(fill)} values for a {channels}-channel image")
    if image.dtype == torch.uint8:
        return [float(min(max(round(v), 0), 255)) for v in values]
    return values


def _resize(sample: Sample, height: int, width: int, interp: str, record: bool = True) -> Sample:
    """Resize image and boxes to (height, width); boxes scale by new/old per axis exactly.

    With ``record``, ``scale_factor`` ([sy, sx], float32) is multiplied by this resize's
    factors, so after the eval pipeline's one Resize it maps predictions back to the input.
    """
    image = sample["image"]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    height, width = max(1, int(height)), max(1, int(width))
    if (height, width) != (h, w):
        mode = _INTERP[interp]
        antialias = mode != InterpolationMode.NEAREST
        sample["image"] = F.resize(image, [height, width], interpolation=mode, antialias=antialias)
        if sample.get("boxes") is not None:
            sample["boxes"] = F.resize(sample["boxes"], [height, width])
    if record:
        factor = torch.tensor([height / h, width / w], dtype=torch.float32)
        if sample.get("scale_factor") is not None:
            factor = torch.as_tensor(sample["scale_factor"], dtype=torch.float32) * factor
        sample["scale_factor"] = factor
    return sample


def _keep_ratio_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """PaddleDetection's keep_ratio: short side to min(target) unless the long side would
    pass max(target): scale = min(min(t) / min(h, w), max(t) / max(h, w))."""
    scale = min(min(target) / min(h, w), max(target) / max(h, w))
    return max(1, int(scale * h + 0.5)), max(1, int(scale * w + 0.5))


def _concat_boxes(parts: list[Sample], canvas: tuple[int, int]) -> dict[str, Any]:
    """Concatenate boxes and per-box keys of several samples (boxes already in the output's
    coordinates); a key missing from some parts is filled (scores 1, others 0)."""
    boxes = [_plain(p["boxes"]) if p.get("boxes") is not None else torch.zeros(0, 4) for p in parts]
    out: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format=_XYXY, canvas_size=canvas)
    }
    for key in PER_BOX_KEYS:
        present = [p[key] for p in parts if p.get(key) is not None]
        if not present and key != "labels":
            continue
        dtype = present[0].dtype if present else torch.int64
        values = []
        for p, b in zip(parts, boxes, strict=True):
            if p.get(key) is not None:
                values.append(p[key].to(dtype))
            elif key == "scores":
                values.append(torch.ones(len(b), dtype=dtype))
            else:
                values.append(torch.zeros(len(b), dtype=dtype))
        out[key] = torch.cat(values)
    return out


# ----------------------------------------------------------------------------- base


class DetTransform:
    """Base: check/wrap the sample (:func:`_prepare`), then :meth:`apply` to a copy."""

    #: fills or blends pixel values in 0..255 units: must come before Normalize
    uint8_only: ClassVar[bool] = False

    def __call__(self, sample: Sample) -> Sample:
        name = type(self).__name__
        sample = _prepare(sample, name)
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


@DET_TRANSFORMS.register()
class Decode(DetTransform):
    """No-op kept so PaddleDetection configs build: the dataset already decodes images."""

    def apply(self, sample):
        return sample


@DET_TRANSFORMS.register()
class Permute(DetTransform):
    """No-op kept so PaddleDetection configs build: images are (C,H,W) tensors already."""

    def apply(self, sample):
        return sample


# ----------------------------------------------------------------------------- geometric


@DET_TRANSFORMS.register()
class RandomFlip(DetTransform):
    """Mirror left-right with probability ``prob``: x1' = W - x2, x2' = W - x1."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = _prob(prob, "RandomFlip.prob")

    def apply(self, sample):
        if self.prob > 0 and _rand() < self.prob:
            sample["image"] = F.horizontal_flip(sample["image"])
            if sample.get("boxes") is not None:
                sample["boxes"] = F.horizontal_flip(sample["boxes"])
        return sample


@DET_TRANSFORMS.register()
class Resize(DetTransform):
    """Resize to ``target_size`` [h, w]; with ``keep_ratio`` (the default, as in
    PaddleDetection) scale both sides by min(min(t)/min(h,w), max(t)/max(h,w)).

    Records ``scale_factor`` ([sy, sx]) in the sample for mapping predictions back.
    """

    def __init__(
        self, target_size: int | Sequence[int] = 640, keep_ratio: bool = True, interp: Any = 1
    ) -> None:
        self.target_size = _size_hw(target_size, "Resize.target_size")
        self.keep_ratio = bool(keep_ratio)
        self.interp = _interp(interp, "Resize.interp")

    def apply(self, sample):
        h, w = sample["image"].shape[-2:]
        size = _keep_ratio_size(h, w, self.target_size) if self.keep_ratio else self.target_size
        return _resize(sample, *size, self.interp)


@DET_TRANSFORMS.register()
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
        self.target_size = _sizes(target_size, "RandomResize.target_size")
        self.keep_ratio = bool(keep_ratio)
        self.interp = _interp(interp, "RandomResize.interp")
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
            return _randint(min(shorts), max(shorts)), _randint(min(longs), max(longs))
        return self.target_size[_randint(0, len(self.target_size) - 1)]

    def apply(self, sample):
        target = self._draw()
        interp = self.interp
        if self.random_interp:
            names = list(_INTERP)
            interp = names[_randint(0, len(names) - 1)]
        h, w = sample["image"].shape[-2:]
        size = _keep_ratio_size(h, w, target) if self.keep_ratio else target
        return _resize(sample, *size, interp)


@DET_TRANSFORMS.register()
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
            None if aspect_ratio is None else _range(aspect_ratio, "RandomCrop.aspect_ratio", 0)
        )
        if self.aspect_ratio is not None and self.aspect_ratio[0] <= 0:
            raise ConfigError(f"RandomCrop.aspect_ratio must be positive, got {aspect_ratio!r}")
        if not _is_seq(thresholds) or len(thresholds) == 0:
            raise ConfigError(
                f"RandomCrop.thresholds must be a list of numbers, got {thresholds!r}"
            )
        self.thresholds = [
            _number(t, f"RandomCrop.thresholds[{i}]", 0, 1) for i, t in enumerate(thresholds)
        ]
        self.scaling = _range(scaling, "RandomCrop.scaling", 0, 1)
        if self.scaling[0] <= 0:
            raise ConfigError(f"RandomCrop.scaling must be in (0, 1], got {scaling!r}")
        self.num_attempts = int(_number(num_attempts, "RandomCrop.num_attempts", 1))
        self.allow_no_crop = bool(allow_no_crop)
        self.cover_all_box = bool(cover_all_box)
        if ioumode not in ("iou", "iof"):
            raise ConfigError(f"RandomCrop.ioumode must be 'iou' or 'iof', got {ioumode!r}")
        self.ioumode = ioumode

    def _draw_crop(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        scale = _uniform(*self.scaling)
        if self.aspect_ratio is not None:
            lo = max(self.aspect_ratio[0], scale**2)
            hi = min(self.aspect_ratio[1], scale**-2)
            ratio = _uniform(lo, hi) if lo <= hi else 1.0
            h_scale, w_scale = scale / math.sqrt(ratio), scale * math.sqrt(ratio)
        else:
            h_scale, w_scale = scale, _uniform(*self.scaling)
        ch, cw = min(h, int(h * h_scale)), min(w, int(w * w_scale))
        if ch < 1 or cw < 1:
            return None
        if self.aspect_ratio is None and not 0.5 <= ch / cw <= 2.0:
            return None
        return _randint(0, h - ch), _randint(0, w - cw), ch, cw

    def apply(self, sample):
        boxes = sample.get("boxes")
        if boxes is None or len(boxes) == 0:
            return sample
        h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
        b = _plain(boxes)
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
                cropped = _plain(sample["boxes"])
                inside &= (cropped[:, 2:] > cropped[:, :2]).all(dim=1)
                return _keep(sample, inside)
        return sample


@DET_TRANSFORMS.register()
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
        self.ratio = _number(ratio, "RandomExpand.ratio", 1.0)
        self.prob = _prob(prob, "RandomExpand.prob")
        self.fill_value = _fill(fill_value, "RandomExpand.fill_value")
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
        else:
            sample["image"], sample["boxes"] = self._op(image, sample["boxes"])
        return sample


@DET_TRANSFORMS.register()
class Pad(DetTransform):
    """Pad bottom/right to ``size`` [h, w] or, without it, to multiples of
    ``size_divisor``; boxes are unchanged. Registered also as ``PadToSize``."""

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        size_divisor: int = 32,
        fill_value: float | Sequence[float] = 0.0,
    ) -> None:
        self.size = None if size is None else _size_hw(size, "Pad.size")
        self.size_divisor = int(_number(size_divisor, "Pad.size_divisor", 1))
        self.fill_value = _fill(fill_value, "Pad.fill_value")

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
        return _pad_to(sample, th, tw, self.fill_value)


def _pad_to(sample: Sample, th: int, tw: int, fill: Sequence[float]) -> Sample:
    image = sample["image"]
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if (th, tw) == (h, w):
        return sample
    padding = [0, 0, tw - w, th - h]  # left, top, right, bottom
    sample["image"] = F.pad(image, padding, fill=_round_fill(fill, image))
    if sample.get("boxes") is not None:
        sample["boxes"] = F.pad(sample["boxes"], padding)  # no shift: only the canvas grows
    return sample


@DET_TRANSFORMS.register()
class SanitizeBoxes(DetTransform):
    """Clip boxes to the image, then drop boxes narrower/shorter than ``min_size`` or with
    area below ``min_area`` together with their labels (``v2.SanitizeBoundingBoxes``)."""

    def __init__(self, min_size: float = 1.0, min_area: float = 1.0) -> None:
        self.min_size = _number(min_size, "SanitizeBoxes.min_size", 0)
        self.min_area = _number(min_area, "SanitizeBoxes.min_area", 0)

    def apply(self, sample):
        boxes = sample.get("boxes")
        if boxes is None or len(boxes) == 0:
            return sample
        boxes = F.clamp_bounding_boxes(boxes, clamping_mode="hard")
        _, valid = F.sanitize_bounding_boxes(boxes, min_size=self.min_size, min_area=self.min_area)
        sample["boxes"] = boxes
        return _keep(sample, valid)


# ----------------------------------------------------------------------------- photometric


@DET_TRANSFORMS.register()
class RandomDistort(DetTransform):
    """Random hue, saturation, contrast and brightness (``v2.RandomPhotometricDistort``'s ops,
    PaddleDetection's arguments). Boxes are untouched.

    Each of ``hue``/``saturation``/``contrast``/``brightness`` is [low, high, prob]: applied
    with probability ``prob`` with a value drawn in [low, high] (hue in degrees, the others
    multiplicative factors). With ``random_apply`` ``count`` of the four run in a random
    order; otherwise SSD's order (brightness, contrast first or last at random, saturation,
    hue). ``random_channel`` shuffles the RGB channels half the time; ``prob`` gates the
    whole transform.
    """

    uint8_only = True

    def __init__(
        self,
        hue: Sequence[float] = (-18, 18, 0.5),
        saturation: Sequence[float] = (0.5, 1.5, 0.5),
        contrast: Sequence[float] = (0.5, 1.5, 0.5),
        brightness: Sequence[float] = (0.5, 1.5, 0.5),
        random_apply: bool = True,
        count: int = 4,
        random_channel: bool = False,
        prob: float = 1.0,
    ) -> None:
        self.hue = self._triple(hue, "hue", -180, 180)
        self.saturation = self._triple(saturation, "saturation", 0, None)
        self.contrast = self._triple(contrast, "contrast", 0, None)
        self.brightness = self._triple(brightness, "brightness", 0, None)
        self.random_apply = bool(random_apply)
        self.count = int(_number(count, "RandomDistort.count", 0, 4))
        self.random_channel = bool(random_channel)
        self.prob = _prob(prob, "RandomDistort.prob")

    @staticmethod
    def _triple(value: Any, key: str, low: float | None, high: float | None):
        what = f"RandomDistort.{key}"
        if not _is_seq(value) or len(value) != 3:
            raise ConfigError(f"{what} must be [low, high, prob], got {value!r}")
        lo, hi = _range(value[:2], what, low, high)
        return lo, hi, _prob(value[2], f"{what}[2] (prob)")

    def _op(self, image: torch.Tensor, which: int) -> torch.Tensor:
        fn, (lo, hi, p) = (
            (F.adjust_brightness, self.brightness),
            (F.adjust_contrast, self.contrast),
            (F.adjust_saturation, self.saturation),
            (_adjust_hue_degrees, self.hue),
        )[which]
        if p > 0 and _rand() < p:
            image = fn(image, _uniform(lo, hi))
        return image

    def apply(self, sample):
        if self.prob < 1 and _rand() >= self.prob:
            return sample
        image = sample["image"]
        if self.random_apply:
            order = torch.randperm(4)[: self.count].tolist()
        else:
            order = [0, 1, 2, 3] if _rand() < 0.5 else [0, 2, 3, 1]
        for which in order:
            image = self._op(image, which)
        if self.random_channel and image.shape[-3] == 3 and _rand() < 0.5:
            image = F.permute_channels(image, torch.randperm(3).tolist())
        sample["image"] = image
        return sample


def _adjust_hue_degrees(image: torch.Tensor, degrees: float) -> torch.Tensor:
    if degrees == 0 or image.shape[-3] != 3:
        return image
    return F.adjust_hue(image, degrees / 360.0)


@DET_TRANSFORMS.register()
class Normalize(DetTransform):
    """uint8 -> float32: ``(x / 255 - mean) / std`` (``is_scale``, mean/std in 0..1 units) or
    ``(x - mean) / std`` with mean/std in pixels; ``norm_type: none`` only scales.
    Registered also as PaddleDetection's ``NormalizeImage``."""

    def __init__(
        self,
        mean: float | Sequence[float] = (0.485, 0.456, 0.406),
        std: float | Sequence[float] = (0.229, 0.224, 0.225),
        is_scale: bool = True,
        norm_type: str = "mean_std",
    ) -> None:
        self.mean, self.std = _fill(mean, "Normalize.mean"), _fill(std, "Normalize.std")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"Normalize.std must be positive, got {list(self.std)}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ConfigError(
                f"Normalize.mean has {len(self.mean)} values but std has {len(self.std)}"
            )
        if norm_type not in ("mean_std", "none"):
            raise ConfigError(
                f"Normalize.norm_type must be 'mean_std' or 'none', got {norm_type!r}"
            )
        self.is_scale = bool(is_scale)
        self.norm_type = norm_type
        unit = 255.0 if self.is_scale else 1.0
        mean_t = torch.tensor(self.mean, dtype=torch.float32)
        mean_t, std_t = torch.broadcast_tensors(mean_t, torch.tensor(self.std, dtype=torch.float32))
        if norm_type == "none":
            mean_t, std_t = torch.zeros(1), torch.ones(1)
        # x * scale + shift, per channel (C,1,1)
        self._scale = (1.0 / (unit * std_t)).view(-1, 1, 1)
        self._shift = (-mean_t / std_t).view(-1, 1, 1)

    def apply(self, sample):
        image = sample["image"]
        if image.dtype != torch.uint8:
            raise DataError(
                f"Normalize needs a uint8 image, got {image.dtype} (is Normalize listed twice?)"
            )
        if self._scale.shape[0] not in (1, image.shape[-3]):
            raise DataError(
                f"Normalize has {self._scale.shape[0]} mean/std values for a "
                f"{image.shape[-3]}-channel image"
            )
        x = torch.addcmul(self._shift, _plain(image).to(torch.float32), self._scale)
        sample["image"] = tv_tensors.wrap(x, like=image)
        return sample


DET_TRANSFORMS.register("NormalizeImage")(Normalize)
DET_TRANSFORMS.register("PadToSize")(Pad)


# ----------------------------------------------------------------------------- mixing


class MixTransform(DetTransform):
    """A transform that mixes this sample with ``num_extra`` others.

    Called as ``t(sample, sample_fn)``; ``sample_fn()`` returns another sample, already
    preprocessed like ``sample`` (:class:`Compose` sees to that). Extra samples are fetched
    only when the transform fires (``prob``), and not at all while ``enabled`` is False
    (the engine may switch mixing off for the last epochs, as YOLOX does).
    """

    uint8_only = True
    num_extra: ClassVar[int] = 1
    prob: float = 1.0
    enabled: bool = True

    def __call__(  # type: ignore[override]
        self, sample: Sample, sample_fn: Callable[[], Sample] | None = None
    ) -> Sample:
        name = type(self).__name__
        sample = _prepare(sample, name)
        if not self.enabled or self.prob == 0 or (self.prob < 1 and _rand() >= self.prob):
            return sample
        if sample_fn is None:
            raise DataError(
                f"{name} mixes {1 + self.num_extra} images and needs other samples: call it as "
                f"{name}(sample, sample_fn), or wrap the dataset in TransformDataset"
            )
        samples = [sample, *(_prepare(sample_fn(), name) for _ in range(self.num_extra))]
        for s in samples:
            if s["image"].dtype != torch.uint8:
                raise DataError(
                    f"{name} needs uint8 images, got {s['image'].dtype}; put it before Normalize"
                )
        return self.mix(samples)

    def mix(self, samples: list[Sample]) -> Sample:
        """Mix ``1 + num_extra`` prepared samples into one (the first one's other keys)."""
        raise NotImplementedError


@DET_TRANSFORMS.register()
class Mixup(MixTransform):
    """Blend two images with ``f ~ Beta(alpha, beta)``: ``f * a + (1 - f) * b`` on a canvas
    of the larger height and width (top-left aligned, zeros elsewhere, as PaddleDetection).

    Boxes and labels are concatenated (a's first); ``scores`` (1 where absent) become
    ``f * scores_a`` and ``(1 - f) * scores_b`` so a loss can weight the boxes.
    """

    num_extra = 1

    def __init__(self, alpha: float = 1.5, beta: float = 1.5, prob: float = 1.0) -> None:
        self.alpha = _number(alpha, "Mixup.alpha", 0)
        self.beta = _number(beta, "Mixup.beta", 0)
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"Mixup.alpha and beta must be > 0, got {alpha!r}, {beta!r}")
        self.prob = _prob(prob, "Mixup.prob")

    def mix(self, samples):
        a, b = samples
        dist = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.beta))
        factor = min(max(float(dist.sample()), 0.0), 1.0)
        if factor >= 1.0:
            return a
        if factor <= 0.0:
            return b
        ia, ib = _plain(a["image"]), _plain(b["image"])
        if ia.shape[0] != ib.shape[0]:
            raise DataError(f"Mixup: images with {ia.shape[0]} and {ib.shape[0]} channels")
        height, width = max(ia.shape[1], ib.shape[1]), max(ia.shape[2], ib.shape[2])
        canvas = torch.zeros((ia.shape[0], height, width), dtype=torch.float32)
        canvas[:, : ia.shape[1], : ia.shape[2]] += ia.to(torch.float32) * factor
        canvas[:, : ib.shape[1], : ib.shape[2]] += ib.to(torch.float32) * (1.0 - factor)
        out = {k: v for k, v in a.items() if k not in ("boxes", *PER_BOX_KEYS)}
        out["image"] = tv_tensors.Image(canvas.round_().clamp_(0, 255).to(torch.uint8))
        parts = []
        for s, weight in ((a, factor), (b, 1.0 - factor)):
            part = {k: s.get(k) for k in ("boxes", *PER_BOX_KEYS)}
            n = 0 if s.get("boxes") is None else len(s["boxes"])
            scores = s.get("scores")
            scores = torch.ones(n) if scores is None else scores.to(torch.float32)
            part["scores"] = scores * weight
            parts.append(part)
        out.update(_concat_boxes(parts, (height, width)))
        return out


@DET_TRANSFORMS.register()
class Mosaic(MixTransform):
    """Four images around a random centre on one ``target_size`` [h, w] canvas.

    Each image is resized (keeping its aspect) to fit a half-size tile (h/2, w/2), the
    centre is drawn at ``center_ratio`` x (h/2, w/2) (a 2x2 grid at 1.0), and image k fills
    the top-left, top-right, bottom-left, bottom-right quadrant around it, cut at the canvas
    edge; the rest is ``fill_value``. Boxes are moved with their image, clipped to the part
    of it that is visible, and dropped (with their labels) when narrower or shorter than
    ``min_box_size`` pixels. Objects come out at about half size: the small-object scale
    augmentation mosaic is used for; resize afterwards as usual.
    """

    num_extra = 3

    def __init__(
        self,
        target_size: int | Sequence[int] = 640,
        prob: float = 1.0,
        center_ratio: Sequence[float] = (0.5, 1.5),
        fill_value: float | Sequence[float] = 114.0,
        min_box_size: float = 2.0,
        interp: Any = 1,
    ) -> None:
        self.target_size = _size_hw(target_size, "Mosaic.target_size")
        self.prob = _prob(prob, "Mosaic.prob")
        self.center_ratio = _range(center_ratio, "Mosaic.center_ratio", 0, 2)
        self.fill_value = _fill(fill_value, "Mosaic.fill_value")
        self.min_box_size = _number(min_box_size, "Mosaic.min_box_size", 0)
        self.interp = _interp(interp, "Mosaic.interp")

    def mix(self, samples):
        height, width = self.target_size
        th, tw = max(1, height // 2), max(1, width // 2)
        yc = min(height, max(0, int(_uniform(*self.center_ratio) * th)))
        xc = min(width, max(0, int(_uniform(*self.center_ratio) * tw)))
        first = samples[0]["image"]
        channels = first.shape[0]
        fill = torch.tensor(_round_fill(self.fill_value, first), dtype=first.dtype)
        canvas = fill.view(-1, 1, 1).expand(channels, height, width).clone()
        parts = []
        for k, s in enumerate(samples):
            ih, iw = int(s["image"].shape[-2]), int(s["image"].shape[-1])
            if s["image"].shape[0] != channels:
                raise DataError(
                    f"Mosaic: images with {channels} and {s['image'].shape[0]} channels"
                )
            scale = min(th / ih, tw / iw)
            nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
            s = _resize(dict(s), nh, nw, self.interp, record=False)
            # paste region (x1, y1, x2, y2) on the canvas and its top-left (sx, sy) in the tile
            if k == 0:
                x1, y1, x2, y2 = max(xc - nw, 0), max(yc - nh, 0), xc, yc
            elif k == 1:
                x1, y1, x2, y2 = xc, max(yc - nh, 0), min(xc + nw, width), yc
            elif k == 2:
                x1, y1, x2, y2 = max(xc - nw, 0), yc, xc, min(yc + nh, height)
            else:
                x1, y1, x2, y2 = xc, yc, min(xc + nw, width), min(yc + nh, height)
            sx = nw - (x2 - x1) if k in (0, 2) else 0
            sy = nh - (y2 - y1) if k in (0, 1) else 0
            if x2 > x1 and y2 > y1:
                tile = _plain(s["image"])[:, sy : sy + y2 - y1, sx : sx + x2 - x1]
                canvas[:, y1:y2, x1:x2] = tile
            part = {key: s.get(key) for key in ("boxes", *PER_BOX_KEYS)}
            if s.get("boxes") is not None:
                b = _plain(s["boxes"]) + torch.tensor([x1 - sx, y1 - sy] * 2, dtype=torch.float32)
                b[:, 0::2] = b[:, 0::2].clamp(x1, x2)
                b[:, 1::2] = b[:, 1::2].clamp(y1, y2)
                part["boxes"] = b
            parts.append(part)
        out = {k: v for k, v in samples[0].items() if k not in ("boxes", *PER_BOX_KEYS)}
        out["image"] = tv_tensors.Image(canvas)
        out.update(_concat_boxes(parts, (height, width)))
        b = _plain(out["boxes"])
        wh = b[:, 2:] - b[:, :2]
        keep = (wh >= self.min_box_size).all(dim=1) & (wh > 0).all(dim=1)
        return _keep(out, keep)


# ----------------------------------------------------------------------------- pipeline


class Compose:
    """Apply transforms in order; uint8-only ones (distort, expand, mix) precede Normalize.

    ``compose(sample, sample_fn)``: ``sample_fn()`` returns another raw sample for mix
    transforms; each extra sample goes through the transforms before the mix transform
    (other mix transforms skipped) first.
    """

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        check_uint8_order(transforms, Normalize, "uint8_only")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, sample_fn: Callable[[], Sample] | None = None) -> Sample:
        for i, t in enumerate(self.transforms):
            if isinstance(t, MixTransform):
                fn = None if sample_fn is None else _Preprocessed(sample_fn, self.transforms[:i])
                sample = t(sample, fn)
            else:
                sample = t(sample)
        return sample

    @property
    def mix_transforms(self) -> list[MixTransform]:
        return [t for t in self.transforms if isinstance(t, MixTransform)]

    def set_mix_enabled(self, enabled: bool) -> None:
        """Switch Mosaic/Mixup on or off (e.g. off for the last epochs)."""
        for t in self.mix_transforms:
            t.enabled = bool(enabled)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"


class _Preprocessed:
    """``sample_fn`` followed by the non-mix transforms that precede a mix transform."""

    def __init__(self, sample_fn: Callable[[], Sample], transforms: list[Callable]) -> None:
        self.sample_fn = sample_fn
        self.transforms = [t for t in transforms if not isinstance(t, MixTransform)]

    def __call__(self) -> Sample:
        sample = self.sample_fn()
        for t in self.transforms:
            sample = t(sample)
        return sample


class TransformDataset(Dataset):
    """``dataset[i]`` (a raw sample dict) through ``transforms``, with mix transforms fed
    random other samples of ``dataset`` (indices from torch's RNG)."""

    def __init__(self, dataset: Any, transforms: Compose | Sequence[Any] | None) -> None:
        self.dataset = dataset
        self.transforms = (
            transforms if isinstance(transforms, Compose) else build_transforms(transforms)
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def random_sample(self) -> Sample:
        return self.dataset[_randint(0, len(self.dataset) - 1)]

    def __getitem__(self, index: int) -> Sample:
        return self.transforms(self.dataset[index], sample_fn=self.random_sample)


def _normalize_spec(spec: Any) -> Any:
    """PaddleDetection's ``{Name: {kwargs}}`` -> ``{type: Name, **kwargs}``."""
    if isinstance(spec, dict) and "type" not in spec and len(spec) == 1:
        ((name, kwargs),) = spec.items()
        if kwargs is None:
            kwargs = {}
        if isinstance(name, str) and isinstance(kwargs, dict):
            return {"type": name, **kwargs}
    return spec


def _build_list(specs: Any, registry: Registry[Any], what: str, wrap: Callable | None = None):
    if specs is None:
        return []
    if isinstance(specs, (dict, str)) or not isinstance(specs, Sequence):
        raise ConfigError(f"{what} must be a list of {{type: ...}} entries, got {specs!r}")
    built = []
    for i, spec in enumerate(specs):
        if callable(spec):
            built.append(spec)
            continue
        spec = _normalize_spec(spec)
        if not isinstance(spec, (dict, str)):
            raise ConfigError(f"{what}[{i}] must be a {{type: ...}} mapping, got {spec!r}")
        name = spec if isinstance(spec, str) else spec.get("type")
        try:
            if wrap is not None and isinstance(name, str) and name not in registry:
                if name in DET_TRANSFORMS:  # a per-sample transform inside batch_transforms
                    built.append(wrap(DET_TRANSFORMS.build(spec)))
                    continue
                if ":" not in name and "." not in name:
                    choices = [*registry.names(), *DET_TRANSFORMS.names()]
                    raise ConfigError(
                        f"unknown {registry.kind} '{name}'{did_you_mean(name, choices)}; "
                        f"registered: {', '.join(sorted(choices))}"
                    )
            built.append(registry.build(spec))
        except ConfigError as exc:
            raise ConfigError(f"{what}[{i}]: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what}[{i}] {spec!r}: {exc}") from None
    return built


def build_transforms(specs: Sequence[Any] | None) -> Compose:
    """A :class:`Compose` from ``[{"type": name, **kwargs}, ...]`` or PaddleDetection's
    ``[{name: {kwargs}}, ...]``; built callables may be mixed in; ``None`` is empty."""
    return Compose(_build_list(specs, DET_TRANSFORMS, "transforms"))


# ----------------------------------------------------------------------------- batches


@DET_BATCH_TRANSFORMS.register()
class BatchRandomResize:
    """YOLO multi-scale: one size per *batch*, drawn from ``target_size``; every sample of
    the batch is resized to it (``keep_ratio``: PaddleDetection's rule, then pad_collate
    evens the sizes out). ``random_interp`` also draws the interpolation per batch."""

    def __init__(
        self,
        target_size: Sequence[Any] = (320, 416, 512, 608),
        keep_ratio: bool = False,
        interp: Any = 1,
        random_size: bool = True,
        random_interp: bool = False,
    ) -> None:
        self.target_size = _sizes(target_size, "BatchRandomResize.target_size")
        self.keep_ratio = bool(keep_ratio)
        self.interp = _interp(interp, "BatchRandomResize.interp")
        self.random_size = bool(random_size)
        self.random_interp = bool(random_interp)

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        if self.random_size:
            target = self.target_size[_randint(0, len(self.target_size) - 1)]
        else:
            target = self.target_size[0]
        interp = self.interp
        if self.random_interp:
            names = list(_INTERP)
            interp = names[_randint(0, len(names) - 1)]
        out = []
        for sample in samples:
            s = _prepare(sample, "BatchRandomResize")
            h, w = s["image"].shape[-2:]
            size = _keep_ratio_size(h, w, target) if self.keep_ratio else target
            out.append(_resize(s, *size, interp))
        return out

    def __repr__(self) -> str:
        return (
            f"BatchRandomResize(target_size={self.target_size!r}, keep_ratio={self.keep_ratio}, "
            f"interp={self.interp!r}, random_size={self.random_size}, "
            f"random_interp={self.random_interp})"
        )


@DET_BATCH_TRANSFORMS.register()
class PadBatch:
    """Pad every image of the batch bottom/right to the batch's largest height and width
    rounded up to ``pad_to_stride`` (boxes unchanged)."""

    def __init__(self, pad_to_stride: int = 32, fill_value: float | Sequence[float] = 0.0) -> None:
        self.pad_to_stride = int(_number(pad_to_stride, "PadBatch.pad_to_stride", 0))
        self.fill_value = _fill(fill_value, "PadBatch.fill_value")

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        samples = [_prepare(s, "PadBatch") for s in samples]
        if not samples:
            return samples
        th, tw = _batch_size(samples, self.pad_to_stride)
        return [_pad_to(s, th, tw, self.fill_value) for s in samples]

    def __repr__(self) -> str:
        return f"PadBatch(pad_to_stride={self.pad_to_stride}, fill_value={self.fill_value!r})"


class _PerSample:
    """A per-sample transform applied to every sample of a batch."""

    def __init__(self, transform: Callable[[Sample], Sample]) -> None:
        self.transform = transform

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        return [self.transform(s) for s in samples]

    def __repr__(self) -> str:
        return repr(self.transform)


class BatchCompose:
    """Batch transforms (``list[Sample] -> list[Sample]``) in order."""

    def __init__(self, transforms: Sequence[Callable[[list[Sample]], list[Sample]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        for t in self.transforms:
            samples = t(samples)
        return samples

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"BatchCompose([{inner}\n])" if inner else "BatchCompose([])"


def build_batch_transforms(specs: Sequence[Any] | None) -> BatchCompose:
    """A :class:`BatchCompose` from PaddleDetection's ``batch_transforms``; per-sample names
    (e.g. ``NormalizeImage``, ``Permute``) are applied to each sample of the batch."""
    return BatchCompose(
        _build_list(specs, DET_BATCH_TRANSFORMS, "batch_transforms", wrap=_PerSample)
    )


def _batch_size(samples: list[Sample], stride: int) -> tuple[int, int]:
    h = max(int(s["image"].shape[-2]) for s in samples)
    w = max(int(s["image"].shape[-1]) for s in samples)
    if stride > 1:
        h, w = -(-h // stride) * stride, -(-w // stride) * stride
    return h, w


def pad_collate(
    samples: Sequence[Sample], stride: int = 32, pad_value: float = 0.0
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack a batch: images padded bottom/right to the largest size, rounded up to a
    multiple of ``stride``, with ``pad_value``; boxes are unchanged (padding adds no offset).

    Returns ``images`` float32 (B,3,H,W) (uint8 images are converted, not rescaled) and one
    target dict per sample: ``boxes`` float32 (N,4) plain tensor, ``labels`` int64 (N,),
    the other per-box keys (``scores`` filled with 1 where a sample lacks it while others
    have it), ``image_size`` int64 [h, w] before padding, and the sample's other keys.
    """
    if len(samples) == 0:
        raise DataError("pad_collate: empty batch")
    samples = [_prepare(s, "pad_collate") for s in samples]
    channels = {int(s["image"].shape[0]) for s in samples}
    if len(channels) != 1:
        raise DataError(f"pad_collate: images with different channel counts {sorted(channels)}")
    height, width = _batch_size(samples, int(stride))
    images = torch.full((len(samples), channels.pop(), height, width), float(pad_value))
    any_scores = any(s.get("scores") is not None for s in samples)
    targets = []
    for i, s in enumerate(samples):
        image = _plain(s["image"])
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image.to(torch.float32)
        target = {k: v for k, v in s.items() if k != "image"}
        if s.get("boxes") is None:
            target["boxes"] = torch.zeros((0, 4), dtype=torch.float32)
            target["labels"] = torch.zeros(0, dtype=torch.int64)
        else:
            target["boxes"] = _plain(s["boxes"]).to(torch.float32)
        n = len(target["boxes"])
        if any_scores and target.get("scores") is None:
            target["scores"] = torch.ones(n, dtype=torch.float32)
        target["image_size"] = torch.tensor([h, w], dtype=torch.int64)
        targets.append(target)
    return images, targets


class DetCollate:
    """A DataLoader ``collate_fn``: batch transforms, then :func:`pad_collate` (picklable)."""

    def __init__(
        self,
        batch_transforms: BatchCompose | Sequence[Any] | None = None,
        stride: int = 32,
        pad_value: float = 0.0,
    ) -> None:
        self.batch_transforms = (
            batch_transforms
            if isinstance(batch_transforms, BatchCompose)
            else build_batch_transforms(batch_transforms)
        )
        self.stride = int(_number(stride, "DetCollate.stride", 0))
        self.pad_value = _number(pad_value, "DetCollate.pad_value")

    def __call__(self, samples: list[Sample]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return pad_collate(self.batch_transforms(list(samples)), self.stride, self.pad_value)

    def __repr__(self) -> str:
        return (
            f"DetCollate({self.batch_transforms!r}, stride={self.stride}, "
            f"pad_value={self.pad_value})"
        )
