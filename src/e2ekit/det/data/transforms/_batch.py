"""Det batch transforms: they see every sample of one batch (one multi-scale size per batch,
padding to the batch's largest image) and end in :func:`pad_collate`, which stacks the images
and keeps one target dict per sample. :class:`DetCollate` runs both as a DataLoader
``collate_fn``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from e2ekit.core.errors import DataError
from e2ekit.core.transform_args import fill_arg, interp_arg, number_arg, sizes_arg
from e2ekit.det.data.transforms._base import (
    HW,
    INTERP,
    MASKS,
    Sample,
    plain,
    prepare,
    randint,
)
from e2ekit.det.data.transforms._container import build_list
from e2ekit.det.data.transforms._geometry import keep_ratio_size, pad_to, resize_sample
from e2ekit.det.registry import BATCH_TRANSFORMS


@BATCH_TRANSFORMS.register()
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
        self.target_size = sizes_arg(target_size, "BatchRandomResize.target_size", HW)
        self.keep_ratio = bool(keep_ratio)
        self.interp = interp_arg(interp, "BatchRandomResize.interp", INTERP)
        self.random_size = bool(random_size)
        self.random_interp = bool(random_interp)

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        if self.random_size:
            target = self.target_size[randint(0, len(self.target_size) - 1)]
        else:
            target = self.target_size[0]
        interp = self.interp
        if self.random_interp:
            names = list(INTERP)
            interp = names[randint(0, len(names) - 1)]
        out = []
        for sample in samples:
            s = prepare(sample, "BatchRandomResize")
            h, w = s["image"].shape[-2:]
            size = keep_ratio_size(h, w, target) if self.keep_ratio else target
            out.append(resize_sample(s, *size, interp))
        return out

    def __repr__(self) -> str:
        return (
            f"BatchRandomResize(target_size={self.target_size!r}, keep_ratio={self.keep_ratio}, "
            f"interp={self.interp!r}, random_size={self.random_size}, "
            f"random_interp={self.random_interp})"
        )


@BATCH_TRANSFORMS.register()
class PadBatch:
    """Pad every image of the batch bottom/right to the batch's largest height and width
    rounded up to ``pad_to_stride`` (boxes unchanged)."""

    def __init__(self, pad_to_stride: int = 32, fill_value: float | Sequence[float] = 0.0) -> None:
        self.pad_to_stride = int(number_arg(pad_to_stride, "PadBatch.pad_to_stride", 0))
        self.fill_value = fill_arg(fill_value, "PadBatch.fill_value")

    def __call__(self, samples: list[Sample]) -> list[Sample]:
        samples = [prepare(s, "PadBatch") for s in samples]
        if not samples:
            return samples
        th, tw = batch_canvas(samples, self.pad_to_stride)
        return [pad_to(s, th, tw, self.fill_value, "PadBatch.fill_value") for s in samples]

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
    return BatchCompose(build_list(specs, BATCH_TRANSFORMS, "batch_transforms", wrap=_PerSample))


def batch_canvas(samples: list[Sample], stride: int) -> tuple[int, int]:
    """The largest height and width of the batch, rounded up to a multiple of ``stride``."""
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
    have it), ``masks`` uint8 (N,H,W) on the padded canvas when the sample has masks,
    ``image_size`` int64 [h, w] before padding, and the sample's other keys.
    """
    if len(samples) == 0:
        raise DataError("pad_collate: empty batch")
    samples = [prepare(s, "pad_collate") for s in samples]
    channels = {int(s["image"].shape[0]) for s in samples}
    if len(channels) != 1:
        raise DataError(f"pad_collate: images with different channel counts {sorted(channels)}")
    height, width = batch_canvas(samples, int(stride))
    images = torch.full((len(samples), channels.pop(), height, width), float(pad_value))
    any_scores = any(s.get("scores") is not None for s in samples)
    targets = []
    for i, s in enumerate(samples):
        image = plain(s["image"])
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image.to(torch.float32)
        target = {k: v for k, v in s.items() if k != "image"}
        if s.get("boxes") is None:
            target["boxes"] = torch.zeros((0, 4), dtype=torch.float32)
            target["labels"] = torch.zeros(0, dtype=torch.int64)
        else:
            target["boxes"] = plain(s["boxes"]).to(torch.float32)
        n = len(target["boxes"])
        if s.get(MASKS) is not None:  # on the padded canvas, so masks[i] overlays images[b]
            masks = torch.zeros((n, height, width), dtype=torch.uint8)
            masks[:, :h, :w] = plain(s[MASKS]).to(torch.uint8)
            target[MASKS] = masks
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
        self.stride = int(number_arg(stride, "DetCollate.stride", 0))
        self.pad_value = number_arg(pad_value, "DetCollate.pad_value")

    def __call__(self, samples: list[Sample]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return pad_collate(self.batch_transforms(list(samples)), self.stride, self.pad_value)

    def __repr__(self) -> str:
        return (
            f"DetCollate({self.batch_transforms!r}, stride={self.stride}, "
            f"pad_value={self.pad_value})"
        )
