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
from e2ekit.core.imageio import colorize, encode_png, overlay, read_image
from e2ekit.core.logs import log
from e2ekit.seg.data.transforms import build_transforms
from e2ekit.seg.test_time import TestConfig, infer_logits


class SegRunner:
    """Turns uint8 images into class-id maps with a Predictor, as ``deploy.yaml`` says."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        self.transforms = build_transforms(deploy["preprocess"]["transforms"])
        self.output = deploy.get("output", "argmax")
        self.output_name = deploy.get("output_name", "label_map")
        self.test = TestConfig(**deploy.get("test", {}))
        if self.output == "argmax" and not self.test.is_plain:
            log.warning("slide/flip/multi-scale inference needs export.output=probs; using whole")
            self.test = TestConfig()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3,H,W) -> normalized float (3,h,w) through the val transforms."""
        label = tv_tensors.Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        sample = self.transforms({"image": tv_tensors.Image(image), "label": label})
        return torch.as_tensor(sample["image"]).float()

    def _run(self, batch: torch.Tensor) -> np.ndarray:
        return self.predictor.run({"image": batch.numpy()})[self.output_name]

    def label_maps(self, batch: torch.Tensor) -> np.ndarray:
        """(B,3,h,w) preprocessed -> (B,h,w) int64 class ids."""
        if self.output == "argmax":
            return np.asarray(self._run(batch), dtype=np.int64)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(self._run(x.contiguous())))

        return infer_logits(fn, batch, self.test).argmax(dim=1).numpy()

    def predict_image(self, image: torch.Tensor) -> np.ndarray:
        """uint8 (3,H,W) -> (H,W) class ids at the original size."""
        x = self.preprocess(image)
        label = self.label_maps(x[None])[0]
        return resize_back(label, tuple(image.shape[-2:]))


def resize_back(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-id map to the original image size."""
    if tuple(label.shape) == tuple(size):
        return label
    t = torch.from_numpy(label.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].long().numpy()


def write_outputs(
    out_dir: Path, stem: str, image: torch.Tensor, label: np.ndarray, ignore_index: int | None
) -> None:
    """class-id PNG, pseudo-colour PNG and overlay, PaddleSeg's three predict outputs."""
    ids = label.astype(np.uint8 if label.max(initial=0) < 256 else np.uint16)
    atomic_write(out_dir / "label" / f"{stem}.png", encode_png(ids))
    atomic_write(out_dir / "pseudo_color" / f"{stem}.png", encode_png(colorize(label)))
    blended = overlay(image, label, alpha=0.5, ignore_index=ignore_index)
    atomic_write(out_dir / "overlay" / f"{stem}.png", encode_png(blended))


def iterate_predictions(
    runner: SegRunner, files: list[Path], wrap: Callable[[Any], Any]
) -> Iterator[tuple[Path, torch.Tensor, np.ndarray]]:
    for path in wrap(files):
        image = read_image(path)
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
