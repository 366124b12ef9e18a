"""Argument checks shared by the vision kits' transforms.

Each check takes the value and ``what`` (``"Resize.target_size"``), returns the value in a
normal form and raises :class:`ConfigError` naming ``what`` otherwise, so a bad config fails
when the pipeline is built, not inside a DataLoader worker. Numbers may be Python or numpy
scalars; booleans are never numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from e2ekit.core.errors import ConfigError, DataError, did_you_mean

__all__ = [
    "CV2_INTERP",
    "fill_arg",
    "interp_arg",
    "is_int",
    "is_number",
    "is_seq",
    "number_arg",
    "pixel_fill",
    "prob_arg",
    "range_arg",
    "size_arg",
    "sizes_arg",
]

#: OpenCV interpolation codes, as PaddleSeg and PaddleDetection configs may write them.
CV2_INTERP = {0: "NEAREST", 1: "LINEAR", 2: "CUBIC", 3: "AREA", 4: "LANCZOS4"}


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_seq(value: Any) -> bool:
    """A list, tuple or array (a string is not a sequence of values here)."""
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def number_arg(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    """A number in [low, high] (either bound may be open-ended)."""
    if not is_number(value) or math.isnan(value):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{what} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def prob_arg(value: Any, what: str) -> float:
    """A probability in [0, 1]."""
    return number_arg(value, what, 0.0, 1.0)


def range_arg(
    value: Any, what: str, low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """A [low, high] pair of numbers within the bounds, with low <= high."""
    if not is_seq(value) or len(value) != 2:
        raise ConfigError(f"{what} must be [low, high], got {value!r}")
    lo = number_arg(value[0], f"{what}[0]", low, high)
    hi = number_arg(value[1], f"{what}[1]", low, high)
    if lo > hi:
        raise ConfigError(f"{what} must be [low, high] with low <= high, got {value!r}")
    return lo, hi


def size_arg(value: Any, what: str, order: str) -> tuple[int, int]:
    """An int (a square) or a pair of positive ints, returned in the order written.

    ``order`` names the pair for the message: PaddleSeg writes ``"width, height"``,
    PaddleDetection ``"height, width"``.
    """
    if is_int(value):
        value = (value, value)
    if not is_seq(value) or len(value) != 2 or not all(is_int(v) and v > 0 for v in value):
        raise ConfigError(f"{what} must be a positive int or [{order}], got {value!r}")
    return int(value[0]), int(value[1])


def sizes_arg(value: Any, what: str, order: str) -> list[tuple[int, int]]:
    """A non-empty list of sizes, each as :func:`size_arg` reads it."""
    if not is_seq(value) or len(value) == 0:
        raise ConfigError(
            f"{what} must be a non-empty list of sizes (int or [{order}]), got {value!r}"
        )
    return [size_arg(v, f"{what}[{i}]", order) for i, v in enumerate(value)]


def fill_arg(value: Any, what: str) -> tuple[float, ...]:
    """A colour: one number for every channel or one per channel (0..255 units)."""
    values = [value] if is_number(value) else value
    if not is_seq(values) or len(values) == 0 or not all(is_number(v) for v in values):
        raise ConfigError(f"{what} must be a number or a list of numbers, got {value!r}")
    return tuple(float(v) for v in values)


def interp_arg(value: Any, what: str, names: Iterable[str]) -> str:
    """One of ``names`` from its name in any case (``linear``, ``cv2.INTER_LINEAR``,
    ``BILINEAR``) or its OpenCV code; the kit maps the name to its resampling mode."""
    names = list(names)
    if is_int(value) and CV2_INTERP.get(int(value)) in names:
        return CV2_INTERP[int(value)]
    hint = ""
    if isinstance(value, str):
        name = value.upper().removeprefix("CV2.").removeprefix("INTER_")
        name = "LINEAR" if name == "BILINEAR" else name
        if name in names:
            return name
        hint = did_you_mean(name, names)
    codes = [code for code, name in CV2_INTERP.items() if name in names]
    use = f"an OpenCV code {_span(codes)} or one of" if codes else "one of"
    raise ConfigError(f"{what} {value!r} is not supported{hint}; use {use} {', '.join(names)}")


def _span(codes: list[int]) -> str:
    """``0-4`` for a run of consecutive codes, else ``0, 2``."""
    if len(codes) > 1 and codes == list(range(codes[0], codes[-1] + 1)):
        return f"{codes[0]}-{codes[-1]}"
    return ", ".join(map(str, codes))


def pixel_fill(fill: Sequence[float], image: torch.Tensor, what: str) -> list[float]:
    """``fill`` (from :func:`fill_arg`) for this image: one value per channel, rounded and
    clipped to 0..255 for a uint8 image; raises DataError when the channel counts differ."""
    channels = image.shape[-3]
    values = list(fill) * channels if len(fill) == 1 else list(fill)
    if len(values) != channels:
        raise DataError(f"{what} has {len(fill)} values for a {channels}-channel image")
    if image.dtype == torch.uint8:
        return [float(min(max(round(v), 0), 255)) for v in values]
    return values
