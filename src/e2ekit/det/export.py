"""Det export: the detector with NMS inside the ONNX graph, or raw boxes and scores.

``export.nms: true`` (default): input ``image (1, 3, S, S)``, outputs ``boxes (M, 4)`` xyxy
input pixels, ``scores (M,)``, ``labels (M,)``; NMS is ONNX ``NonMaxSuppression`` (through
torchvision's traced ``batched_nms``), so any ONNX runtime returns final detections. The
graph takes one image per call (M differs per image). ``export.nms: false``: dynamic batch,
outputs ``boxes (B, A, 4)`` and ``scores (B, A, C)`` for runtimes with their own NMS.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms

from e2ekit.core.engine.task import ExportSpec
from e2ekit.det.config import DetConfig
from e2ekit.det.runner import preprocess

# torchvision's nms wrapper calls torch.jit.script while tracing; the export is unaffected
warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning
)

DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def nms_graph(
    boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, iou: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Traceable class-wise NMS for one image: ``boxes (A, 4)``, ``scores (A, C)``."""
    anchor, label = torch.nonzero(scores > score_thresh, as_tuple=True)
    cand = scores[anchor, label]
    cand_boxes = boxes[anchor]
    keep = batched_nms(cand_boxes, cand, label, iou)[:max_det]  # sorted by score
    return cand_boxes[keep], cand[keep], label[keep]


class DetExportModule(nn.Module):
    def __init__(self, det: nn.Module, nms: bool) -> None:
        super().__init__()
        self.det = det
        self.nms = nms

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, scores = self.det.forward_raw(image)
        if not self.nms:
            return boxes, scores
        d = self.det
        return nms_graph(boxes[0], scores[0], d.score_thresh, d.nms_thresh, d.max_detections)


def preprocess_info(cfg: DetConfig) -> dict[str, Any]:
    """``deploy.preprocess`` from the config: what a runtime must do to a uint8 RGB image
    (resize, no ratio kept; normalise); ``det.runner.Preprocess`` does it."""
    mean, std, is_scale = DEFAULT_MEAN, DEFAULT_STD, True
    for spec in cfg.data.val_transforms:
        name = spec.get("type") if isinstance(spec, dict) else None
        if name in ("Normalize", "NormalizeImage"):
            mean = tuple(spec.get("mean", mean))
            std = tuple(spec.get("std", std))
            is_scale = bool(spec.get("is_scale", True))
    size = cfg.export.input_size
    return {
        "resize": [size, size],
        "keep_ratio": False,
        "mean": mean,
        "std": std,
        "is_scale": is_scale,
    }


def det_export_spec(
    det: nn.Module,
    cfg: DetConfig,
    class_names: list[str],
    images: list[torch.Tensor] | None = None,
) -> ExportSpec:
    """``images``: a few real uint8 images for the parity check (random inputs can give no
    detections at all, which would make an NMS graph's parity trivially 0)."""
    nms = cfg.export.nms
    module = DetExportModule(det, nms).eval()
    size = cfg.export.input_size
    g = torch.Generator().manual_seed(0)
    example = {"image": torch.randn(1, 3, size, size, generator=g)}
    parity = [{"image": torch.randn(1, 3, size, size, generator=g)}]
    info = preprocess_info(cfg)
    parity += [{"image": preprocess(im, info)} for im in images or []]
    if nms:
        outputs = ["boxes", "scores", "labels"]
        axes = {
            "boxes": {0: "detections"},
            "scores": {0: "detections"},
            "labels": {0: "detections"},
        }
    else:
        outputs = ["boxes", "scores"]
        axes = {
            "image": {0: "batch"},
            "boxes": {0: "batch", 1: "anchors"},
            "scores": {0: "batch", 1: "anchors"},
        }
        parity.append({"image": torch.randn(2, 3, size, size, generator=g)})
    deploy = {
        "kit": "det",
        "model_type": cfg.model.get("type"),
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "input_size": size,
        "preprocess": info,
        "nms": nms,
        "score_thresh": float(det.score_thresh),
        "nms_thresh": float(det.nms_thresh),
        "max_detections": int(det.max_detections),
        "draw_threshold": cfg.predict.draw_threshold,
        "max_image_pixels": cfg.predict.max_image_pixels,
        "box_format": "xyxy in input pixels; scale back by original / input size",
    }
    return ExportSpec(
        module=module,
        example_inputs=example,
        output_names=outputs,
        dynamic_axes=axes,
        deploy=deploy,
        parity_inputs=parity,
        int8_keep_final_float=bool(getattr(det, "int8_keep_final_float", False)),
    )
