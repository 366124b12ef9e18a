"""Photometric det transforms: colour distortion and normalisation (boxes untouched).

RandomDistort works on uint8 pixels; Normalize turns them into float32 and ends that part of
the pipeline (:class:`Compose` checks the order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.transform_args import fill_arg, is_seq, number_arg, prob_arg, range_arg
from e2ekit.det.data.transforms._base import DetTransform, plain, rand, uniform
from e2ekit.det.registry import TRANSFORMS


@TRANSFORMS.register()
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
        self.count = int(number_arg(count, "RandomDistort.count", 0, 4))
        self.random_channel = bool(random_channel)
        self.prob = prob_arg(prob, "RandomDistort.prob")

    @staticmethod
    def _triple(value: Any, key: str, low: float | None, high: float | None):
        what = f"RandomDistort.{key}"
        if not is_seq(value) or len(value) != 3:
            raise ConfigError(f"{what} must be [low, high, prob], got {value!r}")
        lo, hi = range_arg(value[:2], what, low, high)
        return lo, hi, prob_arg(value[2], f"{what}[2] (prob)")

    def _op(self, image: torch.Tensor, which: int) -> torch.Tensor:
        fn, (lo, hi, p) = (
            (F.adjust_brightness, self.brightness),
            (F.adjust_contrast, self.contrast),
            (F.adjust_saturation, self.saturation),
            (_adjust_hue_degrees, self.hue),
        )[which]
        if p > 0 and rand() < p:
            image = fn(image, uniform(lo, hi))
        return image

    def apply(self, sample):
        if self.prob < 1 and rand() >= self.prob:
            return sample
        image = sample["image"]
        if self.random_apply:
            order = torch.randperm(4)[: self.count].tolist()
        else:
            order = [0, 1, 2, 3] if rand() < 0.5 else [0, 2, 3, 1]
        for which in order:
            image = self._op(image, which)
        if self.random_channel and image.shape[-3] == 3 and rand() < 0.5:
            image = F.permute_channels(image, torch.randperm(3).tolist())
        sample["image"] = image
        return sample


def _adjust_hue_degrees(image: torch.Tensor, degrees: float) -> torch.Tensor:
    if degrees == 0 or image.shape[-3] != 3:
        return image
    return F.adjust_hue(image, degrees / 360.0)


@TRANSFORMS.register()
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
        self.mean, self.std = fill_arg(mean, "Normalize.mean"), fill_arg(std, "Normalize.std")
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
        x = torch.addcmul(self._shift, plain(image).to(torch.float32), self._scale)
        sample["image"] = tv_tensors.wrap(x, like=image)
        return sample


TRANSFORMS.register("NormalizeImage")(Normalize)
