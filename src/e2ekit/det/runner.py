"""Deploy-side det: from ``deploy.yaml`` alone, an image in, detections in its own pixels out.

Shared by ``predict`` (JSON lines and drawn images), ``serve`` and the export's parity and
int8 calibration inputs, so every path resizes and normalises the same way.

A model that returns instance masks (Mask R-CNN, exported or run from its checkpoint) adds a
``masks`` output, (B, K, S, S) probabilities over each detection's box; each is pasted into
its box at the image's own size (uint8 (M, H, W)), drawn over the image and written into the
JSON lines as COCO RLE.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from e2ekit.core.errors import DataError
from e2ekit.core.fileio import atomic_write
from e2ekit.core.imageio import encode_png, read_image
from e2ekit.det.config import MAX_PREDICT_PIXELS

__all__ = [
    "MASK_FORMAT",
    "MAX_IMAGE_KEY",
    "NMS_OUTPUTS",
    "PADDED",
    "PADDING_LABEL",
    "DetRunner",
    "Preprocess",
    "draw",
    "masks_in_image",
    "output_layout",
    "paste_box_masks",
    "preprocess",
    "save_image",
    "unpad",
]

# The config key of predict's decode limit (PredictConfig.max_image_pixels).
MAX_IMAGE_KEY = "predict.max_image_pixels"

# Model layouts (deploy.nms_layout names the padded one) and the NMS graph's outputs.
PADDED, SINGLE, RAW = "padded", "single", "raw"
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
PADDING_LABEL = -1  # the label of a padding row

# One image's boxes (M, 4), scores (M,) and labels (M,) in input pixels, plus, for a mask
# model, its masks (M, S, S) probabilities over each box.
Raw = tuple[np.ndarray, ...]
MASK_THRESHOLD = 0.5  # a mask probability above this is the object
MASK_FORMAT = (
    "masks (B, K, S, S): each detection's mask probabilities over its own box; resize to the "
    "box in the original image (bilinear) and threshold at 0.5"
)


def paste_box_masks(masks: torch.Tensor, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-local mask probabilities (M, S, S) and their boxes (M, 4) xyxy in the image's
    pixels -> uint8 (M, h, w) binary masks of the image (torchvision's paste, then 0.5)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    h, w = int(size[0]), int(size[1])
    probs = torch.as_tensor(masks, dtype=torch.float32)
    if probs.shape[0] == 0:
        return np.zeros((0, h, w), np.uint8)
    pasted = paste_masks_in_image(probs[:, None], torch.as_tensor(boxes).float(), (h, w))
    return (pasted[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)


def masks_in_image(
    masks: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]
) -> np.ndarray:
    """Input-pixel mask probabilities (M, [1,] H', W') -> uint8 (M, h, w) in the original
    image: the image's part of the (padded) input, ``scale`` (sy, sx) times its ``size``
    (h, w), resized back bilinearly, then thresholded at 0.5 (as torchvision does)."""
    h, w = int(size[0]), int(size[1])
    probs = torch.as_tensor(masks, dtype=torch.float32)
    probs = probs.reshape(-1, 1, *probs.shape[-2:])
    if probs.shape[0] == 0:
        return np.zeros((0, h, w), np.uint8)
    sy, sx = float(scale[0]), float(scale[1])
    top = max(1, min(probs.shape[-2], round(h * sy)))
    left = max(1, min(probs.shape[-1], round(w * sx)))
    probs = F.interpolate(
        probs[..., :top, :left], size=(h, w), mode="bilinear", align_corners=False
    )
    return (probs[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)


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


def output_layout(predictor: Any) -> str:
    """``padded`` (NMS graph over a batch), ``single`` (NMS graph of one image, exports
    written before the padded layout) or ``raw`` (no NMS in the graph).

    Told by the graph's outputs (``num_detections`` exists only in the padded layout), else
    by ``deploy.nms_layout`` (a checkpoint's module has no ONNX outputs to read).
    """
    deploy = predictor.deploy
    if not deploy["nms"]:
        return RAW
    names = [o.get("name") for o in deploy.get("outputs") or []]
    names = names or list(getattr(predictor, "output_names", None) or [])
    if "num_detections" in names or deploy.get("nms_layout") == PADDED:
        return PADDED
    return SINGLE


def unpad(out: Mapping[str, np.ndarray]) -> list[Raw]:
    """The padded outputs as each image's detections: its first ``num_detections`` rows."""
    counts = np.asarray(out["num_detections"]).astype(np.int64).reshape(-1)
    keys = ("boxes", "scores", "labels", "masks") if "masks" in out else NMS_OUTPUTS[:3]
    return [tuple(out[k][b, :n] for k in keys) for b, n in enumerate(counts.tolist())]


def preprocess(image: torch.Tensor, info: Mapping[str, Any]) -> torch.Tensor:
    """uint8 (3, H, W) -> the exported graph's input (1, 3, S, S), as ``deploy.preprocess``."""
    return Preprocess(info)(image)[None]


class DetRunner:
    """uint8 images -> detections in their original pixels, from an export or a checkpoint.

    Three model layouts (:func:`output_layout`): the padded NMS graph and the raw one take a
    batch per call; the one-image NMS graph of older exports takes an image per call.
    """

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        if deploy.get("kit") != "det":
            raise DataError(f"this is a {deploy.get('kit')!r} model, not a det export")
        self.preprocess = Preprocess(deploy["preprocess"])
        self.size = self.preprocess.size
        self.names = list(deploy["class_names"])
        self.nms = bool(deploy["nms"])
        self.layout = output_layout(predictor)
        self.deploy = deploy
        # exports from before the limit existed get the default
        self.max_image_pixels = int(deploy.get("max_image_pixels", MAX_PREDICT_PIXELS))

    @property
    def batched(self) -> bool:
        """Whether one model call takes several images: not for a one-image NMS graph, nor
        for a graph whose input batch axis is fixed at 1."""
        inputs = self.deploy.get("inputs") or [{}]
        fixed = (inputs[0].get("shape") or [None])[0]
        return self.layout != SINGLE and fixed != 1

    def read(self, path: Path) -> torch.Tensor:
        """An input image as uint8 (3, H, W), refused from its header when it is over the
        limit (``predict.max_image_pixels``) rather than decoded."""
        return read_image(path, self.max_image_pixels, MAX_IMAGE_KEY)

    def detect(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """Detections of each uint8 (3, H, W) image: one model call for all of them, or one
        per image for a one-image NMS graph."""
        if not images:
            return []
        if not self.batched:
            return [self._finish(self._run([im])[0], im) for im in images]  # one per call
        return [self._finish(d, im) for d, im in zip(self._run(images), images, strict=True)]

    def _run(self, images: Sequence[torch.Tensor]) -> list[Raw]:
        """One model call; each image's boxes, scores and labels in input pixels."""
        x = np.stack([self.preprocess(im).numpy() for im in images])  # (B, 3, S, S)
        out = self.predictor.run({"image": x})
        if self.layout == PADDED:
            return unpad(out)
        if self.layout == SINGLE:
            return [(out["boxes"], out["scores"], out["labels"])]
        return self._nms(out)

    def _nms(self, out: Mapping[str, np.ndarray]) -> list[Raw]:
        """Raw graph: the runtime has no NMS, so it runs here, per image."""
        from e2ekit.det.models.base import multiclass_nms

        d = self.deploy
        result = []
        for boxes, scores in zip(out["boxes"], out["scores"], strict=True):
            det = multiclass_nms(
                torch.as_tensor(boxes),
                torch.as_tensor(scores),
                d["score_thresh"],
                d["nms_thresh"],
                d["max_detections"],
            )
            result.append(tuple(det[k].numpy() for k in ("boxes", "scores", "labels")))
        return result

    def _finish(self, raw: Raw, image: torch.Tensor) -> dict[str, np.ndarray]:
        """Input-pixel detections scaled back to ``image``'s pixels and clipped to it."""
        boxes, scores, labels = raw[:3]
        h, w = image.shape[-2:]
        sy, sx = h / self.size[0], w / self.size[1]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * [sx, sy, sx, sy]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        found = {
            "boxes": boxes,
            "scores": np.asarray(scores, dtype=np.float32).reshape(-1),
            "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
        }
        if len(raw) > 3:  # box-local probabilities, pasted at the image's own resolution
            found["masks"] = paste_box_masks(torch.as_tensor(raw[3]), boxes, (int(h), int(w)))
        return found

    def as_json(self, det: dict[str, np.ndarray], threshold: float = 0.0) -> list[dict[str, Any]]:
        """One dict per detection scoring at least ``threshold``; with masks, each carries
        its mask as COCO RLE (``mask``: ``{size: [h, w], counts: str}``)."""
        from e2ekit.det.metrics import encode_masks

        keep = np.asarray(det["scores"]) >= threshold
        rles: list[Any] = (
            encode_masks(det["masks"][keep]) if "masks" in det else [None] * int(keep.sum())
        )
        items = []
        picked = zip(det["boxes"][keep], det["scores"][keep], det["labels"][keep], strict=True)
        for (b, s, lab), rle in zip(picked, rles, strict=True):
            item = {
                "label": self.names[int(lab)] if 0 <= int(lab) < len(self.names) else int(lab),
                "class_id": int(lab),
                "score": round(float(s), 5),
                "box": [round(float(v), 2) for v in b],
            }
            if rle is not None:
                item["mask"] = rle
            items.append(item)
        return items


def draw(
    image: torch.Tensor,
    boxes: np.ndarray,
    captions: list[str],
    masks: np.ndarray | None = None,
    class_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """Boxes and captions (and instance ``masks`` uint8 (M, H, W), half-transparent) drawn on
    a uint8 (3, H, W) image so a person can read them at any size: line width and font
    scale with the image, each caption sits on a filled tag of its box's colour, and a
    class keeps one colour (``class_ids``) across images."""
    if len(boxes) == 0:
        return image
    ids = [int(k) for k in class_ids] if class_ids is not None else list(range(len(boxes)))
    colors = [PALETTE[k % len(PALETTE)] for k in ids]
    if masks is not None and len(masks):
        image = draw_segmentation_masks(
            image, torch.as_tensor(masks).bool(), alpha=0.45, colors=colors
        )
    side = math.sqrt(image.shape[-2] * image.shape[-1])
    font = caption_font()
    return draw_bounding_boxes(
        image,
        torch.as_tensor(boxes, dtype=torch.float32),
        labels=captions,
        colors=colors,
        width=max(2, round(side / 250)),
        font=font,
        font_size=max(11, round(side / 45)) if font else None,
        fill_labels=True,
        label_colors=[_ink(c) for c in colors],
    )


# distinct, saturated colours (Tableau 10 and a few more): class k gets PALETTE[k % len]
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (0, 0, 128), (128, 0, 0), (0, 128, 128), (255, 215, 0), (75, 0, 130),
]  # fmt: skip


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on ``color``."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@functools.cache
def caption_font() -> str | None:
    """A scalable TrueType font for captions (matplotlib ships DejaVu Sans); None falls back
    to PIL's small bitmap font."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except ImportError:
        return None
    return str(path) if path.is_file() else None


def save_image(image: torch.Tensor, path: Path) -> None:
    """A uint8 (3, H, W) image as a PNG that appears whole or not at all."""
    atomic_write(path, encode_png(image.permute(1, 2, 0).numpy()))  # (H, W, 3)
