"""Test-time inference (the config's ``test`` section): whole image or sliding window, with
flip and multi-scale TTA.

Works on any ``logits_fn(x (B,3,h,w)) -> (B,K,h,w)``: the PyTorch network during
evaluation, or an exported model (probabilities output) through the core Predictor,
so deployment sees exactly the numbers evaluation saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from e2ekit.core.imageio import PIXEL_CEILING
from e2ekit.core.schema import Strict

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["TestConfig", "infer_logits", "slide_logits", "tile_spans"]


class TestConfig(Strict):
    """PaddleSeg's ``test_config``: how evaluation and prediction run the network.

    Sizes are (width, height), as in PaddleSeg and the seg transforms.
    """

    __test__ = False  # not a pytest test class, despite the name

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] = Field((512, 512), description="slide window (w, h)")
    stride: tuple[int, int] = Field((341, 341), description="slide step (w, h)")
    flip_horizontal: bool = False
    flip_vertical: bool = False
    scales: list[float] = Field([1.0], min_length=1)
    max_whole_pixels: int = Field(
        2048 * 2048,
        ge=1,
        description="predict/serve: largest image (w*h) the model sees whole; a larger one "
        "runs window by window (crop_size, stride), so memory stays bounded",
    )
    max_image_pixels: int = Field(
        1 << 28,
        ge=1,
        le=PIXEL_CEILING,
        description="predict: largest image (w*h) decoded at all; a larger file is refused "
        "from its header before any work",
    )

    @model_validator(mode="after")
    def _check(self) -> TestConfig:
        if any(s <= 0 for s in self.scales):
            raise ValueError("test.scales must be positive")
        if any(st <= 0 or st > c for st, c in zip(self.stride, self.crop_size, strict=True)):
            raise ValueError("test.stride must be in 1..crop_size")
        return self

    @property
    def is_plain(self) -> bool:
        return (
            self.mode == "whole"
            and not self.flip_horizontal
            and not self.flip_vertical
            and self.scales == [1.0]
        )


def _starts(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop, stride))
    starts.append(size - crop)  # last window flush with the border
    return starts


def tile_spans(size: int, crop: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows along one axis as (start, keep_from, keep_to): window ``start`` is the one
    whose prediction pixels ``keep_from..keep_to`` take.

    The same windows as :func:`slide_logits`; where two overlap, each keeps the half nearer
    its own centre, so every pixel comes from one window with context on both sides and no
    image-sized accumulator is needed (what bounds memory for huge images).
    """
    starts = _starts(size, crop, stride)
    cuts = [0, *((a + crop + b) // 2 for a, b in itertools.pairwise(starts)), size]
    return [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


def slide_logits(
    fn: LogitsFn, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Average overlapping window predictions; ``crop``/``stride`` are (h, w) here."""
    b, _, h, w = x.shape
    ch, cw = crop
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for top in _starts(h, ch, stride[0]):
        for left in _starts(w, cw, stride[1]):
            window = x[:, :, top : top + ch, left : left + cw]
            wh, ww = window.shape[-2:]
            if wh < ch or ww < cw:  # image smaller than the crop: pad, predict, cut back
                window = F.pad(window, (0, cw - ww, 0, ch - wh))
            out = fn(window)[:, :, :wh, :ww].float()
            if total is None:
                total = torch.zeros(b, out.shape[1], h, w, device=x.device)
            total[:, :, top : top + wh, left : left + ww] += out
            count[:, :, top : top + wh, left : left + ww] += 1
    assert total is not None
    return total / count


def infer_logits(fn: LogitsFn, x: torch.Tensor, cfg: TestConfig | None = None) -> torch.Tensor:
    """Logits (or averaged probabilities under TTA) at the input's resolution, (B,K,H,W)."""
    cfg = cfg or TestConfig()
    if cfg.is_plain:
        return fn(x)
    h, w = x.shape[-2:]

    def one(inp: torch.Tensor) -> torch.Tensor:
        if cfg.mode == "slide":
            return slide_logits(fn, inp, cfg.crop_size[::-1], cfg.stride[::-1])
        return fn(inp)

    total: torch.Tensor | None = None
    for scale in cfg.scales:
        xs = x
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        flips: list[list[int]] = [[]]
        if cfg.flip_horizontal:
            flips.append([3])
        if cfg.flip_vertical:
            flips.append([2])
        for dims in flips:
            inp = xs.flip(dims) if dims else xs
            out = one(inp)
            out = out.flip(dims) if dims else out
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            prob = out.softmax(dim=1)
            total = prob if total is None else total + prob
    assert total is not None
    return total
