"""Det export: the detector with NMS inside the ONNX graph, or raw boxes and scores.

``export.nms: true`` (default): input ``image (B, 3, S, S)`` with a dynamic batch; outputs
padded to a fixed size per image, the layout of TensorRT's EfficientNMS and PaddleDetection:
``boxes (B, K, 4)`` xyxy input pixels, ``scores (B, K)``, ``labels (B, K)`` int64 and
``num_detections (B,)`` int64, K = the detector's ``max_detections``. Rows past
``num_detections[b]`` are padding (zeros, label -1). Class-wise NMS is one ONNX
``NonMaxSuppression`` over every (image, class) pair, so one image never suppresses
another's boxes and any ONNX runtime returns final detections for a whole batch per call.
A mask model (Mask R-CNN) adds ``masks (B, K, S, S)``: each detection's mask
probabilities over its own box, pasted into the image by ``det.runner``.
``export.nms: false``: dynamic batch, outputs ``boxes (B, A, 4)`` and ``scores (B, A, C)``
for runtimes with their own NMS.

Exports written before the padded layout took one image (``image (1, 3, S, S)`` ->
``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)``); ``det.runner`` tells the two apart by
their outputs and still runs the old one, an image per call.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms

from e2ekit.core.engine.task import ExportSpec
from e2ekit.core.errors import ConfigError
from e2ekit.det.config import DetConfig
from e2ekit.det.runner import MASK_FORMAT, NMS_OUTPUTS, PADDED, PADDING_LABEL, preprocess

__all__ = [
    "DetExportModule",
    "batched_nms_graph",
    "classwise_nms",
    "det_export_spec",
    "preprocess_info",
    "traces_a_batch",
]

DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def classwise_nms(
    boxes: torch.Tensor, scores: torch.Tensor, limit: int, iou: float, score_thresh: float
) -> torch.Tensor:
    """NMS of every (image, class) on its own, as ONNX ``NonMaxSuppression`` defines it.

    ``boxes (B, A, 4)``, ``scores (B, C, A)`` -> ``(N, 3)`` int64 rows ``[image, class, box]``
    ordered by image, class, then score, at most ``limit`` per pair: onnxruntime's output, so
    the eager module (parity reference, ``predict --weights``) and the graph agree. Each pair
    runs its own NMS rather than one NMS over offset boxes, which would lose float precision
    as the offsets grow with the batch.
    """
    img, cls, anchor = torch.nonzero(scores > score_thresh, as_tuple=True)  # (image, class)-major
    if img.numel() == 0:
        return img.new_zeros((0, 3))
    cand_boxes = boxes[img, anchor].float()
    cand_scores = scores[img, cls, anchor].float()
    _, counts = torch.unique_consecutive(img * scores.shape[1] + cls, return_counts=True)
    kept, start = [], 0
    for count in counts.tolist():  # eager only: the graph has one NonMaxSuppression node
        part = slice(start, start + count)
        kept.append(nms(cand_boxes[part], cand_scores[part], iou)[:limit] + start)
        start += count
    keep = torch.cat(kept)
    return torch.stack([img[keep], cls[keep], anchor[keep]], dim=1)


class _ClasswiseNMS(torch.autograd.Function):
    """:func:`classwise_nms` in eager mode; one ``NonMaxSuppression`` node in ONNX."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        limit: int,
        iou: float,
        score_thresh: float,
    ) -> torch.Tensor:
        # traced, the body would become a sub-block the ONNX passes cannot handle; the
        # symbolic below stands for it
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return classwise_nms(boxes, scores, limit, iou, score_thresh)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(
        g: Any, boxes: Any, scores: Any, limit: int, iou: float, score_thresh: float
    ) -> Any:
        def const(value: float, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            const(limit, torch.int64),
            const(iou, torch.float32),
            const(score_thresh, torch.float32),
        )


def best_first(values: torch.Tensor) -> torch.Tensor:
    """Indices sorting 1-D ``values`` high to low, ties in index order: ONNX ``TopK`` in the
    graph (onnxruntime breaks ties by index), a stable sort in eager mode."""
    if torch.onnx.is_in_onnx_export():
        return torch.topk(values, values.shape[0]).indices
    return torch.sort(values, descending=True, stable=True).indices


def batched_nms_graph(
    boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, iou: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Traceable class-wise NMS of a batch: ``boxes (B, A, 4)``, ``scores (B, A, C)`` ->
    ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)``, ``num_detections (B,)``.

    Each image keeps its ``max_det`` best boxes by score, exactly what NMS of that image alone
    keeps. Only tensor ops, no loop over the batch, so the batch axis stays dynamic.
    """
    batch = scores.shape[0]
    scores = scores.transpose(1, 2).contiguous()  # (B, C, A), NonMaxSuppression's layout
    sel = _ClasswiseNMS.apply(boxes, scores, max_det, iou, score_thresh)
    img, cls, anchor = sel[:, 0], sel[:, 1], sel[:, 2]
    sel_scores = scores[img, cls, anchor]
    # best first over the whole batch; the order within an image is then its own ranking
    order = best_first(sel_scores)
    img, cls, anchor, sel_scores = img[order], cls[order], anchor[order], sel_scores[order]
    same = (img[:, None] == torch.arange(batch, device=img.device)[None]).long()  # (N, B)
    rank = (same.cumsum(0) * same).sum(1) - 1  # place of each detection within its image
    fits = rank < max_det
    slot = (img * max_det + rank)[fits]
    out_boxes = boxes.new_zeros((batch * max_det, 4)).index_put((slot,), boxes[img, anchor][fits])
    out_scores = scores.new_zeros(batch * max_det).index_put((slot,), sel_scores[fits])
    out_labels = torch.full_like(out_scores, PADDING_LABEL, dtype=torch.int64)
    out_labels = out_labels.index_put((slot,), cls[fits])
    return (
        out_boxes.view(batch, max_det, 4),
        out_scores.view(batch, max_det),
        out_labels.view(batch, max_det),
        same.sum(0).clamp(max=max_det),
    )


class DetExportModule(nn.Module):
    """The detector as exported: raw outputs, or final detections padded per image."""

    def __init__(self, det: nn.Module, nms: bool) -> None:
        super().__init__()
        self.det = det
        self.nms = nms

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, scores = self.det.forward_raw(image)
        if not self.nms:
            return boxes, scores
        d = self.det
        return batched_nms_graph(boxes, scores, d.score_thresh, d.nms_thresh, d.max_detections)


class DetMaskModule(nn.Module):
    """A mask detector as exported (and as ``predict --weights`` runs its checkpoint): the
    padded NMS outputs plus ``masks (B, K, S, S)``, each detection's class-mask
    probabilities over its own box (the mask branch runs on the final boxes, after NMS)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.det
        feats = d.backbone(image)
        boxes, scores = d.raw_from_features(image, feats)
        found = batched_nms_graph(boxes, scores, d.score_thresh, d.nms_thresh, d.max_detections)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return (*found, d.box_masks(feats, found[0], found[2], size))


def build_inference_module(
    model: dict[str, Any], num_classes: int, nms: bool, postprocess: dict[str, Any] | None = None
) -> nn.Module:
    """The exported module rebuilt for the Predictor's torch backend (``weights.pt`` holds
    its state): the detector from its ``model`` section with the export's NMS settings
    (``postprocess``: score_thresh, nms_thresh, max_detections), wrapped as
    :func:`det_export_spec` wraps it."""
    from e2ekit.det.registry import MODELS
    from e2ekit.det.task import _register_models

    _register_models()
    det = MODELS.build(dict(model), num_classes=num_classes).eval()
    for key, value in (postprocess or {}).items():
        setattr(det, key, value)
    return (DetMaskModule(det) if hasattr(det, "box_masks") else DetExportModule(det, nms)).eval()


def _rebuild_model_section(det: nn.Module, model: dict[str, Any]) -> dict[str, Any]:
    """``model`` as the torch backend rebuilds it: without ``pretrained`` (a file of the
    training machine; ``weights.pt`` replaces it), and with the batch-norm kind the
    pretrained file chose spelled out, so the rebuilt module has the same state keys."""
    from torchvision.ops import FrozenBatchNorm2d

    from e2ekit.det.registry import MODELS

    out = {k: v for k, v in model.items() if k != "pretrained"}
    if "pretrained" in model and "frozen_bn" not in out:
        builder = MODELS.get(str(model["type"]))
        if "frozen_bn" in inspect.signature(builder).parameters:
            out["frozen_bn"] = any(isinstance(m, FrozenBatchNorm2d) for m in det.modules())
    return out


def traces_a_batch(det: nn.Module) -> bool:
    """Whether ``forward_raw`` traces with a dynamic batch. A detector whose rows differ in
    number per image (``raw_export_refused``: Faster R-CNN's proposals) splits the batch in
    Python, which a trace would freeze; its NMS graph takes one image (batch fixed at 1, the
    same padded outputs) and ``det.runner`` then calls it an image at a time."""
    return getattr(det, "raw_export_refused", None) is None


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
    refused = getattr(det, "raw_export_refused", None)
    if not nms and refused:
        raise ConfigError(
            f"export.nms: false is not available for model.type "
            f"{cfg.model.get('type')}: {refused}; export with export.nms: true"
        )
    module = DetExportModule(det, nms).eval()
    size = cfg.export.input_size
    g = torch.Generator().manual_seed(0)
    info = preprocess_info(cfg)
    real = [preprocess(im, info) for im in images or []]
    if nms:
        batched = traces_a_batch(det)
        # traced at batch 2 so nothing specialises to one image; parity then covers batch 1,
        # each real image alone and all of them in one call
        example = {"image": torch.randn(2 if batched else 1, 3, size, size, generator=g)}
        parity = [{"image": torch.randn(1, 3, size, size, generator=g)}]
        parity += [{"image": x} for x in real]
        if len(real) > 1 and batched:
            parity.append({"image": torch.cat(real)})
        outputs = list(NMS_OUTPUTS)
        names = ["image", *outputs] if batched else []
        axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names}
    else:
        example = {"image": torch.randn(1, 3, size, size, generator=g)}
        parity = [{"image": torch.randn(1, 3, size, size, generator=g)}]
        parity += [{"image": x} for x in real]
        parity.append({"image": torch.randn(2, 3, size, size, generator=g)})
        outputs = ["boxes", "scores"]
        axes = {
            "image": {0: "batch"},
            "boxes": {0: "batch", 1: "anchors"},
            "scores": {0: "batch", 1: "anchors"},
        }
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
    if nms:
        deploy["nms_layout"] = PADDED
        deploy["count_output"] = "num_detections"  # int8 checks compare counts, not rows
        deploy["padding"] = (
            f"per image, rows past num_detections are zeros with label {PADDING_LABEL}; "
            "K = max_detections rows"
        )
    if hasattr(det, "box_masks"):  # instance masks after NMS (Mask R-CNN)
        module = DetMaskModule(det).eval()  # Faster R-CNN's: export.nms: false refused above
        outputs.append("masks")
        if "image" in axes:
            axes["masks"] = {0: "batch"}
        deploy["mask_format"] = MASK_FORMAT
    return ExportSpec(
        module=module,
        example_inputs=example,
        output_names=outputs,
        dynamic_axes=axes,
        deploy=deploy,
        parity_inputs=parity,
        int8_keep_final_float=bool(getattr(det, "int8_keep_final_float", False)),
        torch_builder="e2ekit.det.export:build_inference_module",
        builder_config={
            "model": _rebuild_model_section(det, dict(cfg.model)),
            "num_classes": len(class_names),
            "nms": nms,
            "postprocess": {k: deploy[k] for k in ("score_thresh", "nms_thresh", "max_detections")},
        },
    )
