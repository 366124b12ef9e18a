"""Det transforms that mix several images into one (Mosaic, Mixup).

A :class:`MixTransform` is an ordinary entry of the transform list, as in PaddleDetection,
but it is called as ``t(sample, sample_fn)``, where ``sample_fn()`` returns another sample
of the dataset, already preprocessed like ``sample`` (:class:`Compose` passes each extra
sample through the transforms listed before the mix transform). Without a ``sample_fn`` a
mix transform raises a DataError that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torchvision import tv_tensors

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.transform_args import (
    fill_arg,
    interp_arg,
    number_arg,
    pixel_fill,
    prob_arg,
    range_arg,
    size_arg,
)
from e2ekit.det.data.transforms._base import (
    HW,
    INTERP,
    MASKS,
    PER_BOX_KEYS,
    XYXY,
    DetTransform,
    Sample,
    keep_boxes,
    plain,
    prepare,
    rand,
    uniform,
)
from e2ekit.det.data.transforms._geometry import resize_sample
from e2ekit.det.registry import TRANSFORMS

#: Keys a mix transform rebuilds from its parts rather than copying from the first sample.
MIXED_KEYS = ("boxes", *PER_BOX_KEYS, MASKS)


def place_masks(
    masks: torch.Tensor,
    canvas: tuple[int, int],
    dst: tuple[int, int, int, int],
    src: tuple[int, int],
) -> torch.Tensor:
    """(N, H', W') masks pasted on a zero ``canvas``: the region ``dst`` (x1, y1, x2, y2)
    receives the masks' pixels from ``src`` (sx, sy) on, as the image tile is pasted."""
    x1, y1, x2, y2 = dst
    sx, sy = src
    out = torch.zeros((masks.shape[0], *canvas), dtype=torch.uint8)
    if x2 > x1 and y2 > y1:
        out[:, y1:y2, x1:x2] = plain(masks)[:, sy : sy + y2 - y1, sx : sx + x2 - x1]
    return out


def concat_boxes(parts: list[Sample], canvas: tuple[int, int]) -> dict[str, Any]:
    """Concatenate boxes and per-box keys of several samples (boxes already in the output's
    coordinates); a key missing from some parts is filled (scores 1, others 0). Masks (already
    on ``canvas``) are concatenated when any part has them; a part without gets zeros."""
    boxes = [plain(p["boxes"]) if p.get("boxes") is not None else torch.zeros(0, 4) for p in parts]
    out: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format=XYXY, canvas_size=canvas)
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
    if any(p.get(MASKS) is not None for p in parts):
        masks = [
            plain(p[MASKS]) if p.get(MASKS) is not None else torch.zeros((len(b), *canvas))
            for p, b in zip(parts, boxes, strict=True)
        ]
        out[MASKS] = tv_tensors.Mask(torch.cat([m.to(torch.uint8) for m in masks]))
    return out


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
        sample = prepare(sample, name)
        if not self.enabled or self.prob == 0 or (self.prob < 1 and rand() >= self.prob):
            return sample
        if sample_fn is None:
            raise DataError(
                f"{name} mixes {1 + self.num_extra} images and needs other samples: call it as "
                f"{name}(sample, sample_fn), or wrap the dataset in TransformDataset"
            )
        samples = [sample, *(prepare(sample_fn(), name) for _ in range(self.num_extra))]
        for s in samples:
            if s["image"].dtype != torch.uint8:
                raise DataError(
                    f"{name} needs uint8 images, got {s['image'].dtype}; put it before Normalize"
                )
        return self.mix(samples)

    def mix(self, samples: list[Sample]) -> Sample:
        """Mix ``1 + num_extra`` prepared samples into one (the first one's other keys)."""
        raise NotImplementedError


@TRANSFORMS.register()
class Mixup(MixTransform):
    """Blend two images with ``f ~ Beta(alpha, beta)``: ``f * a + (1 - f) * b`` on a canvas
    of the larger height and width (top-left aligned, zeros elsewhere, as PaddleDetection).

    Boxes, labels and masks are concatenated (a's first); ``scores`` (1 where absent) become
    ``f * scores_a`` and ``(1 - f) * scores_b`` so a loss can weight the boxes.
    """

    num_extra = 1

    def __init__(self, alpha: float = 1.5, beta: float = 1.5, prob: float = 1.0) -> None:
        self.alpha = number_arg(alpha, "Mixup.alpha", 0)
        self.beta = number_arg(beta, "Mixup.beta", 0)
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"Mixup.alpha and beta must be > 0, got {alpha!r}, {beta!r}")
        self.prob = prob_arg(prob, "Mixup.prob")

    def mix(self, samples):
        a, b = samples
        dist = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.beta))
        factor = min(max(float(dist.sample()), 0.0), 1.0)
        if factor >= 1.0:
            return a
        if factor <= 0.0:
            return b
        ia, ib = plain(a["image"]), plain(b["image"])
        if ia.shape[0] != ib.shape[0]:
            raise DataError(f"Mixup: images with {ia.shape[0]} and {ib.shape[0]} channels")
        height, width = max(ia.shape[1], ib.shape[1]), max(ia.shape[2], ib.shape[2])
        canvas = torch.zeros((ia.shape[0], height, width), dtype=torch.float32)
        canvas[:, : ia.shape[1], : ia.shape[2]] += ia.to(torch.float32) * factor
        canvas[:, : ib.shape[1], : ib.shape[2]] += ib.to(torch.float32) * (1.0 - factor)
        out = {k: v for k, v in a.items() if k not in MIXED_KEYS}
        out["image"] = tv_tensors.Image(canvas.round_().clamp_(0, 255).to(torch.uint8))
        parts = []
        for s, weight in ((a, factor), (b, 1.0 - factor)):
            part = {k: s.get(k) for k in MIXED_KEYS}
            if s.get(MASKS) is not None:  # top-left aligned on the larger canvas
                ih, iw = s[MASKS].shape[-2:]
                part[MASKS] = place_masks(s[MASKS], (height, width), (0, 0, iw, ih), (0, 0))
            n = 0 if s.get("boxes") is None else len(s["boxes"])
            scores = s.get("scores")
            scores = torch.ones(n) if scores is None else scores.to(torch.float32)
            part["scores"] = scores * weight
            parts.append(part)
        out.update(concat_boxes(parts, (height, width)))
        return out


@TRANSFORMS.register()
class Mosaic(MixTransform):
    """Four images around a random centre on one ``target_size`` [h, w] canvas.

    Each image is resized (keeping its aspect) to fit a half-size tile (h/2, w/2), the
    centre is drawn at ``center_ratio`` x (h/2, w/2) (a 2x2 grid at 1.0), and image k fills
    the top-left, top-right, bottom-left, bottom-right quadrant around it, cut at the canvas
    edge; the rest is ``fill_value``. Boxes are moved with their image, clipped to the part
    of it that is visible, and dropped (with their labels and masks) when narrower or shorter than
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
        self.target_size = size_arg(target_size, "Mosaic.target_size", HW)
        self.prob = prob_arg(prob, "Mosaic.prob")
        self.center_ratio = range_arg(center_ratio, "Mosaic.center_ratio", 0, 2)
        self.fill_value = fill_arg(fill_value, "Mosaic.fill_value")
        self.min_box_size = number_arg(min_box_size, "Mosaic.min_box_size", 0)
        self.interp = interp_arg(interp, "Mosaic.interp", INTERP)

    def mix(self, samples):
        height, width = self.target_size
        th, tw = max(1, height // 2), max(1, width // 2)
        yc = min(height, max(0, int(uniform(*self.center_ratio) * th)))
        xc = min(width, max(0, int(uniform(*self.center_ratio) * tw)))
        first = samples[0]["image"]
        channels = first.shape[0]
        fill = torch.tensor(
            pixel_fill(self.fill_value, first, "Mosaic.fill_value"), dtype=first.dtype
        )
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
            s = resize_sample(dict(s), nh, nw, self.interp, record=False)
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
                tile = plain(s["image"])[:, sy : sy + y2 - y1, sx : sx + x2 - x1]
                canvas[:, y1:y2, x1:x2] = tile
            part = {key: s.get(key) for key in MIXED_KEYS}
            if s.get(MASKS) is not None:  # cut and pasted exactly as the image tile
                part[MASKS] = place_masks(s[MASKS], (height, width), (x1, y1, x2, y2), (sx, sy))
            if s.get("boxes") is not None:
                b = plain(s["boxes"]) + torch.tensor([x1 - sx, y1 - sy] * 2, dtype=torch.float32)
                b[:, 0::2] = b[:, 0::2].clamp(x1, x2)
                b[:, 1::2] = b[:, 1::2].clamp(y1, y2)
                part["boxes"] = b
            parts.append(part)
        out = {k: v for k, v in samples[0].items() if k not in MIXED_KEYS}
        out["image"] = tv_tensors.Image(canvas)
        out.update(concat_boxes(parts, (height, width)))
        b = plain(out["boxes"])
        wh = b[:, 2:] - b[:, :2]
        keep = (wh >= self.min_box_size).all(dim=1) & (wh > 0).all(dim=1)
        return keep_boxes(out, keep)
