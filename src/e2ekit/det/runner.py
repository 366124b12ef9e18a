"""Deploy-side det: from ``deploy.yaml`` alone, an image in, detections in its own pixels out.

Shared by ``predict`` (JSON lines and drawn images), ``serve`` and the export's parity and
int8 calibration inputs, so every path resizes and normalises the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from e2ekit.core.errors import DataError
from e2ekit.core.fileio import atomic_write
from e2ekit.core.imageio import encode_png, read_image
from e2ekit.det.config import MAX_PREDICT_PIXELS

__all__ = ["MAX_IMAGE_KEY", "DetRunner", "Preprocess", "draw", "preprocess", "save_image"]

# The config key of predict's decode limit (PredictConfig.max_image_pixels).
MAX_IMAGE_KEY = "predict.max_image_pixels"


class Preprocess:
    """``deploy.preprocess`` as a callable: uint8 (3, H, W) -> float (3, S, S), resized
    without keeping the ratio and normalised in one multiply-add."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.size = [int(x) for x in info["resize"]]
        unit = 255.0 if info.get("is_scale", True) else 1.0
        mean = torch.tensor(info["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(info["std"], dtype=torch.float32).view(-1, 1, 1)
        self.scale, self.shift = 1.0 / (unit * std), -mean / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        resized = TF.resize(image, self.size, antialias=True)
        return resized.float() * self.scale + self.shift  # (3, S, S)


def preprocess(image: torch.Tensor, info: Mapping[str, Any]) -> torch.Tensor:
    """uint8 (3, H, W) -> the exported graph's input (1, 3, S, S), as ``deploy.preprocess``."""
    return Preprocess(info)(image)[None]


class DetRunner:
    """uint8 image -> detections in original pixels, from an export or a checkpoint."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        if deploy.get("kit") != "det":
            raise DataError(f"this is a {deploy.get('kit')!r} model, not a det export")
        self.preprocess = Preprocess(deploy["preprocess"])
        self.size = self.preprocess.size
        self.names = list(deploy["class_names"])
        self.nms = bool(deploy["nms"])
        self.deploy = deploy
        # exports from before the limit existed get the default
        self.max_image_pixels = int(deploy.get("max_image_pixels", MAX_PREDICT_PIXELS))

    def read(self, path: Path) -> torch.Tensor:
        """An input image as uint8 (3, H, W), refused from its header when it is over the
        limit (``predict.max_image_pixels``) rather than decoded."""
        return read_image(path, self.max_image_pixels, MAX_IMAGE_KEY)

    def detect(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        h, w = image.shape[-2:]
        x = self.preprocess(image)[None].numpy()
        out = self.predictor.run({"image": x})
        if self.nms:
            boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
        else:
            from e2ekit.det.models.base import multiclass_nms

            d = self.deploy
            det = multiclass_nms(
                torch.as_tensor(out["boxes"][0]),
                torch.as_tensor(out["scores"][0]),
                d["score_thresh"],
                d["nms_thresh"],
                d["max_detections"],
            )
            boxes, scores, labels = (det[k].numpy() for k in ("boxes", "scores", "labels"))
        sy, sx = h / self.size[0], w / self.size[1]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * [sx, sy, sx, sy]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return {
            "boxes": boxes,
            "scores": np.asarray(scores, dtype=np.float32).reshape(-1),
            "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
        }

    def as_json(self, det: dict[str, np.ndarray], threshold: float = 0.0) -> list[dict[str, Any]]:
        return [
            {
                "label": self.names[int(lab)] if 0 <= int(lab) < len(self.names) else int(lab),
                "class_id": int(lab),
                "score": round(float(s), 5),
                "box": [round(float(v), 2) for v in b],
            }
            for b, s, lab in zip(det["boxes"], det["scores"], det["labels"], strict=True)
            if s >= threshold
        ]


def draw(image: torch.Tensor, boxes: np.ndarray, captions: list[str]) -> torch.Tensor:
    """Boxes and captions drawn on a uint8 (3, H, W) image."""
    if len(boxes) == 0:
        return image
    width = max(1, round(max(image.shape[-2:]) / 200))
    return draw_bounding_boxes(
        image, torch.as_tensor(boxes, dtype=torch.float32), labels=captions, width=width
    )


def save_image(image: torch.Tensor, path: Path) -> None:
    """A uint8 (3, H, W) image as a PNG that appears whole or not at all."""
    atomic_write(path, encode_png(image.permute(1, 2, 0).numpy()))  # (H, W, 3)
