"""Deploy-side seg: from ``deploy.yaml`` alone, preprocess, run a Predictor, map back, encode.

Shared by ``predict`` (files: label, pseudo-colour and overlay PNGs) and ``serve`` (PNG or
run-length masks), so both see the same numbers as evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from e2ekit.core.fileio import atomic_write
from e2ekit.core.imageio import colorize, encode_png, get_palette, overlay, read_image
from e2ekit.core.logs import log
from e2ekit.seg.data.transforms import Compose, Normalize, build_transforms
from e2ekit.seg.test_time import TestConfig, infer_logits, tile_spans

# The config key of the predict decode limit (TestConfig.max_image_pixels).
MAX_IMAGE_KEY = "test.max_image_pixels"
# Pixels per model call when predicting window by window (four 512x512 windows).
WINDOW_BATCH_PIXELS = 1 << 20
# What an argmax export can run: no averaging of scores, so no flips, scales or overlaps.
PLAIN = {"mode": "whole", "flip_horizontal": False, "flip_vertical": False, "scales": [1.0]}


class SegRunner:
    """Turns uint8 images into class-id maps with a Predictor, as ``deploy.yaml`` says.

    An image over ``test.max_whole_pixels`` is predicted window by window (``test.crop_size``,
    ``test.stride``): the model never sees it whole, and no image-sized float tensor exists.
    """

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        self.transforms = build_transforms(deploy["preprocess"]["transforms"])
        self.output = deploy.get("output", "argmax")
        self.output_name = deploy.get("output_name", "label_map")
        self.num_classes = int(deploy["num_classes"])
        self.test = TestConfig(**deploy.get("test", {}))
        if self.output == "argmax" and not self.test.is_plain:
            log.warning("slide/flip/multi-scale inference needs export.output=probs; using whole")
            self.test = self.test.model_copy(update=PLAIN)
        # Each window runs the whole-image recipe (flips, scales) on its own pixels.
        self.window_test = self.test.model_copy(update={"mode": "whole"})
        self.geometry, self.pixelwise = split_at_normalize(self.transforms)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3,H,W) -> normalized float (3,h,w) through the val transforms."""
        label = tv_tensors.Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        sample = self.transforms({"image": tv_tensors.Image(image), "label": label})
        return torch.as_tensor(sample["image"]).float()

    def _run(self, batch: torch.Tensor) -> np.ndarray:
        return self.predictor.run({"image": batch.numpy()})[self.output_name]

    def label_maps(self, batch: torch.Tensor, test: TestConfig | None = None) -> np.ndarray:
        """(B,3,h,w) preprocessed -> (B,h,w) int64 class ids."""
        if self.output == "argmax":
            return np.asarray(self._run(batch), dtype=np.int64)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(self._run(x.contiguous())))

        return infer_logits(fn, batch, test or self.test).argmax(dim=1).numpy()

    def is_tiled(self, image: torch.Tensor) -> bool:
        """Whether ``image`` is too large to run whole (``test.max_whole_pixels``)."""
        h, w = image.shape[-2:]
        return h * w > self.test.max_whole_pixels

    def predict_image(self, image: torch.Tensor) -> np.ndarray:
        """uint8 (3,H,W) -> (H,W) class ids at the original size."""
        if self.is_tiled(image):
            return self.predict_tiled(image)
        x = self.preprocess(image)
        label = self.label_maps(x[None])[0]
        return resize_back(label, tuple(image.shape[-2:]))

    def predict_tiled(self, image: torch.Tensor) -> np.ndarray:
        """uint8 (3,H,W) -> (H,W) class ids, the model run on batches of windows.

        Resizes (the transforms before ``Normalize``) apply to the whole uint8 image, so
        windows see the scale the model was trained at; ``Normalize`` runs per window.
        Same-shaped windows share a model call, up to about ``WINDOW_BATCH_PIXELS`` pixels:
        a thin image (a million 512x1 windows) costs a few calls, not a million.
        """
        sample = self.geometry({"image": tv_tensors.Image(image)})
        pixels = torch.as_tensor(sample["image"])  # (3, h, w), uint8 unless a custom step
        h, w = pixels.shape[-2:]
        crop_w, crop_h = self.test.crop_size
        stride_w, stride_h = self.test.stride
        label = np.empty((h, w), dtype=label_dtype(self.num_classes))
        per_call = max(1, WINDOW_BATCH_PIXELS // max(1, min(h, crop_h) * min(w, crop_w)))
        pending: list[tuple[torch.Tensor, tuple[int, int, int, int, int, int]]] = []

        def flush() -> None:
            ids = self.label_maps(torch.stack([x for x, _ in pending]), self.window_test)
            for one, (top, left, y0, y1, x0, x1) in zip(ids, (p for _, p in pending), strict=True):
                label[y0:y1, x0:x1] = one[y0 - top : y1 - top, x0 - left : x1 - left]
            pending.clear()

        for top, y0, y1 in tile_spans(h, crop_h, stride_h):
            for left, x0, x1 in tile_spans(w, crop_w, stride_w):
                window = pixels[:, top : top + crop_h, left : left + crop_w]
                x = torch.as_tensor(self.pixelwise({"image": window})["image"]).float()
                if pending and (len(pending) == per_call or pending[0][0].shape != x.shape):
                    flush()
                pending.append((x.contiguous(), (top, left, y0, y1, x0, x1)))
        if pending:
            flush()
        return resize_back(label, tuple(image.shape[-2:]))


def split_at_normalize(transforms: Compose) -> tuple[Compose, Compose]:
    """(everything before the last ``Normalize``, the rest): the first part may resize and
    works on uint8, the second maps pixels one by one, so it can run per window."""
    steps = list(transforms.transforms)
    cut = max((i for i, t in enumerate(steps) if isinstance(t, Normalize)), default=len(steps))
    return Compose(steps[:cut]), Compose(steps[cut:])


def label_dtype(num_classes: int) -> type[np.integer]:
    """The narrowest dtype holding every class id: a 16000x16000 map is 256 MB as uint8."""
    return np.uint8 if num_classes <= 256 else np.int32


def resize_back(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-id map to the original image size."""
    if tuple(label.shape) == tuple(size):
        return label
    if label.dtype == np.uint8:  # interpolated as is: no wider copy of a large map
        t = torch.from_numpy(np.ascontiguousarray(label))[None, None]
        return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy()
    t = torch.from_numpy(label.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].long().numpy()


# Rows per block when colouring a large map: ~4 M pixels keeps float temporaries ~50 MB.
_BLOCK_PIXELS = 1 << 22


def row_blocks(height: int, width: int) -> Iterator[slice]:
    """Row ranges of about ``_BLOCK_PIXELS`` pixels, to work on a large map in pieces."""
    step = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, step):
        yield slice(top, min(top + step, height))


def class_counts(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class id below ``num_classes``; counted by row blocks, since bincount
    copies its input as int64 (2 GB for a 16000x16000 map)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for rows in row_blocks(*label.shape):
        counts += np.bincount(label[rows].reshape(-1), minlength=num_classes)[:num_classes]
    return counts


def write_outputs(
    out_dir: Path, stem: str, image: torch.Tensor, label: np.ndarray, ignore_index: int | None
) -> None:
    """class-id PNG, pseudo-colour PNG and overlay, PaddleSeg's three predict outputs.

    Colours and the blend are computed by row blocks into uint8 arrays, so a huge image
    costs its uint8 outputs, not float copies of them."""
    top = int(label.max(initial=0))
    ids = label.astype(np.uint8 if top < 256 else np.uint16, copy=False)
    atomic_write(out_dir / "label" / f"{stem}.png", encode_png(ids))
    palette = get_palette(max(256, top + 1))
    h, w = label.shape
    picture = np.empty((h, w, 3), dtype=np.uint8)
    for rows in row_blocks(h, w):
        picture[rows] = colorize(label[rows], palette)
    atomic_write(out_dir / "pseudo_color" / f"{stem}.png", encode_png(picture))
    for rows in row_blocks(h, w):
        picture[rows] = overlay(
            image[:, rows], label[rows], alpha=0.5, palette=palette, ignore_index=ignore_index
        )
    atomic_write(out_dir / "overlay" / f"{stem}.png", encode_png(picture))


def iterate_predictions(
    runner: SegRunner, files: list[Path], wrap: Callable[[Any], Any]
) -> Iterator[tuple[Path, torch.Tensor, np.ndarray]]:
    limit = runner.test.max_image_pixels
    for path in wrap(files):
        image = read_image(path, limit, MAX_IMAGE_KEY)
        yield path, image, runner.predict_image(image)


def rle_encode(label: np.ndarray) -> dict[str, Any]:
    """Row-major run-length encoding: ``values[i]`` repeated ``counts[i]`` times."""
    flat = label.reshape(-1)
    if flat.size == 0:
        return {"size": list(label.shape), "values": [], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    return {"size": list(label.shape), "values": flat[starts].tolist(), "counts": counts.tolist()}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    return np.repeat(np.asarray(rle["values"]), np.asarray(rle["counts"])).reshape(rle["size"])
