"""Mask R-CNN (He et al., ICCV 2017): Faster R-CNN + FPN with a per-RoI mask branch,
PaddleDetection's ``mask_rcnn_r50_fpn`` family.

Everything of :class:`~e2ekit.det.models.faster_rcnn.FasterRCNN` plus torchvision's mask
parts under torchvision's names (so a ``maskrcnn_resnet50_fpn_coco`` checkpoint lines up):
a 14x14 ``MultiScaleRoIAlign`` on P2-P5 (``roi_heads.mask_roi_pool``), ``MaskRCNNHeads``
(``roi_heads.mask_head``) and ``MaskRCNNPredictor`` (``roi_heads.mask_predictor``, 28x28
logits per class). Training adds ``loss_mask`` (torchvision's ``maskrcnn_loss`` on the
positive proposals, targets ``masks`` uint8 (N, H, W) in input pixels).

Eval output per image adds ``masks``: float (M, 1, H, W) probabilities in input pixels
(the padded batch size), the detection's class channel pasted into its box, as
torchvision's ``MaskRCNN`` returns them; threshold at 0.5 for a binary mask. Keeping
probabilities lets the caller resize before thresholding (back to the original image).

Deployment (:meth:`MaskRCNN.box_masks`, used by the ONNX export and by ``predict
--weights`` alike) runs the mask branch on the final, padded detections and returns each
one's class mask as (B, K, S, S) probabilities over its box (S = 28), the layout of
PaddleDetection's and mmdeploy's exports: small, independent of the image size, and pasted
into the box at the original image's resolution by ``det.runner``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.det.models.base import Detection, Target
from e2ekit.det.models.faster_rcnn import (
    CLASS_DEPENDENT,
    FasterRCNN,
    _build,
    faster_rcnn_r50_fpn,
    faster_rcnn_tiny,
    head_settings,
    load_detector_weights,
    narrow_resnet_fpn_maker,
    resnet50_fpn_maker,
)
from e2ekit.det.models.roi_pool import GatherRoIAlign
from e2ekit.det.registry import MODELS

__all__ = ["MaskRCNN", "mask_rcnn_r50_fpn", "mask_rcnn_tiny"]

# the per-class mask logits depend on the class count, like the box predictor
MASK_CLASS_DEPENDENT = "roi_heads.mask_predictor.mask_fcn_logits."


class MaskRCNN(FasterRCNN):
    """Faster R-CNN plus a mask branch (see the module docstring).

    Args (besides :class:`FasterRCNN`'s):
        mask_layers: channels of each 3x3 conv of the mask head (torchvision: 4 x 256).
        mask_dilation: dilation of those convs.
        mask_roi_output_size, mask_sampling_ratio: RoIAlign of the mask branch (14, 2).
    """

    #: the task reads instance masks for this model (COCO segmentations)
    needs_masks: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        strides: Sequence[int],
        roi_levels: Sequence[str],
        mask_layers: Sequence[int] = (256, 256, 256, 256),
        mask_dilation: int = 1,
        mask_roi_output_size: int = 14,
        mask_sampling_ratio: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, backbone, strides, roi_levels, **kwargs)
        layers = [int(c) for c in mask_layers]
        if not layers or min(layers) < 1:
            raise ConfigError(f"model.mask_layers must be positive channel counts, got {layers}")
        if int(mask_roi_output_size) < 1 or int(mask_dilation) < 1:
            raise ConfigError("model.mask_roi_output_size and model.mask_dilation must be >= 1")
        heads = self.roi_heads
        heads.mask_roi_pool = GatherRoIAlign(
            list(roi_levels), int(mask_roi_output_size), int(mask_sampling_ratio)
        )
        heads.mask_head = MaskRCNNHeads(int(backbone.out_channels), layers, int(mask_dilation))
        heads.mask_predictor = MaskRCNNPredictor(layers[-1], layers[-1], self.num_classes + 1)

    # -- training -----------------------------------------------------------------------
    def losses(self, images: Tensor, targets: Sequence[Target]) -> dict[str, Tensor]:
        tgts = self._mask_targets(targets, images.device)
        feats = self.backbone(images)
        image_list = self._image_list(images)
        proposals, rpn_losses = self.rpn(image_list, feats, tgts)
        _, roi_losses = self.roi_heads(feats, proposals, image_list.image_sizes, tgts)
        return {
            "loss_rpn_cls": rpn_losses["loss_objectness"],
            "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
            "loss_rcnn_cls": roi_losses["loss_classifier"],
            "loss_rcnn_box": roi_losses["loss_box_reg"],
            "loss_mask": roi_losses["loss_mask"],
        }

    def _mask_targets(self, targets: Sequence[Target], device: torch.device) -> list[Target]:
        """torchvision targets with ``masks``; degenerate boxes go with their masks."""
        kept, masks = [], []
        for i, t in enumerate(targets):
            if t.get("masks") is None:
                raise DataError(
                    f"target {i} has no 'masks': {type(self).__name__} trains on instance "
                    "masks (COCO 'segmentation'); use COCO data with segmentations"
                )
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            m = torch.as_tensor(t["masks"], device=device)
            if m.shape[0] != boxes.shape[0]:
                raise DataError(f"target {i}: {m.shape[0]} masks for {boxes.shape[0]} boxes")
            kept.append({"boxes": boxes[ok], "labels": torch.as_tensor(t["labels"])[ok.cpu()]})
            masks.append(m[ok])
        out = self._torchvision_targets(kept, device)
        for t, m in zip(out, masks, strict=True):
            t["masks"] = m
        return out

    # -- inference ----------------------------------------------------------------------
    def forward(
        self, images: Tensor, targets: Sequence[Target] | None = None
    ) -> dict[str, Tensor] | list[Detection]:
        if self.training:
            return super().forward(images, targets)
        feats = self.backbone(images)
        detections = self.postprocess(*self.raw_from_features(images, feats))
        return self._add_masks(feats, detections, (int(images.shape[-2]), int(images.shape[-1])))

    def _add_masks(
        self, feats: dict[str, Tensor], detections: list[Detection], size: tuple[int, int]
    ) -> list[Detection]:
        """Each detection's class mask, probabilities pasted into its box (input pixels)."""
        boxes = [d["boxes"] for d in detections]
        if sum(len(b) for b in boxes) == 0:
            for d in detections:
                d["masks"] = feats["0"].new_zeros((0, 1, *size))
            return detections
        labels = torch.cat([d["labels"] for d in detections])
        probs = self._class_masks(feats, boxes, labels, size).split([len(b) for b in boxes])
        for d, p in zip(detections, probs, strict=True):
            d["masks"] = paste_masks_in_image(p[:, None], d["boxes"], size)
        return detections

    def box_masks(
        self, feats: dict[str, Tensor], boxes: Tensor, labels: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Padded detections ``boxes (B, K, 4)`` input pixels, ``labels (B, K)`` (padding
        rows -1) -> ``(B, K, S, S)`` mask probabilities over each box. Tensor ops only, so it
        traces into the export's graph after NMS; padding rows get a mask nobody reads."""
        batch, k = boxes.shape[:2]
        rois = [boxes[b] for b in range(batch)]
        probs = self._class_masks(feats, rois, labels.reshape(-1).clamp(min=0), size)
        return probs.reshape(batch, k, *probs.shape[-2:])

    def _class_masks(
        self, feats: dict[str, Tensor], boxes: list[Tensor], labels: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """(N, S, S) sigmoid probabilities of each box's own class channel; ``labels`` are
        the N boxes' foreground labels (0-based), in order."""
        heads = self.roi_heads
        pooled = heads.mask_roi_pool(feats, boxes, [size] * len(boxes))
        logits = heads.mask_predictor(heads.mask_head(pooled))  # (N, C + 1, S, S)
        side = logits.shape[-2:]
        channel = (labels + 1).reshape(-1, 1, 1, 1).expand(-1, 1, *side)  # + background
        return logits.gather(1, channel)[:, 0].sigmoid()


def load_mask_rcnn_weights(model: nn.Module, path: str | Path) -> None:
    """A whole-detector checkpoint: the box and mask predictors may differ (class count)."""
    load_detector_weights(model, path, (CLASS_DEPENDENT, MASK_CLASS_DEPENDENT))


def _mask_kwargs(
    layers: Sequence[int], dilation: int, roi_output_size: int, sampling_ratio: int
) -> dict[str, Any]:
    return {
        "mask_layers": tuple(layers),
        "mask_dilation": dilation,
        "mask_roi_output_size": roi_output_size,
        "mask_sampling_ratio": sampling_ratio,
    }


@MODELS.register("mask_rcnn_r50_fpn")
def mask_rcnn_r50_fpn(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    mask_layers: Sequence[int] = (256, 256, 256, 256),
    mask_dilation: int = 1,
    mask_roi_output_size: int = 14,
    mask_sampling_ratio: int = 2,
    **head: Any,
) -> MaskRCNN:
    """Mask R-CNN ResNet-50 FPN, torchvision's ``maskrcnn_resnet50_fpn`` (v1) layout.

    ``head``: any RPN / box-head setting of ``faster_rcnn_r50_fpn`` (same defaults).
    ``pretrained``: a local detector checkpoint or ImageNet ResNet-50 state dict.
    """
    kwargs = head_settings(faster_rcnn_r50_fpn, head, "mask_rcnn_r50_fpn", "mask_*")
    kwargs |= _mask_kwargs(mask_layers, mask_dilation, mask_roi_output_size, mask_sampling_ratio)
    backbone = resnet50_fpn_maker(fpn_channels, pretrained)
    model = _build(
        num_classes, backbone, pretrained, trainable_layers, frozen_bn, kwargs,
        make_model=MaskRCNN, load=load_mask_rcnn_weights,
    )  # fmt: skip
    assert isinstance(model, MaskRCNN)
    return model


@MODELS.register("mask_rcnn_tiny")
def mask_rcnn_tiny(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks: int = 1,
    fpn_channels: int = 64,
    mask_layers: Sequence[int] = (64, 64),
    mask_dilation: int = 1,
    mask_roi_output_size: int = 14,
    mask_sampling_ratio: int = 2,
    **head: Any,
) -> MaskRCNN:
    """A small Mask R-CNN for tests and quick CPU runs: ``faster_rcnn_tiny`` (its head
    settings and defaults, passed through ``head``) plus a two-conv, 64-wide mask head."""
    kwargs = head_settings(faster_rcnn_tiny, head, "mask_rcnn_tiny", "mask_*")
    kwargs |= _mask_kwargs(mask_layers, mask_dilation, mask_roi_output_size, mask_sampling_ratio)
    backbone = narrow_resnet_fpn_maker(widths, blocks, fpn_channels, pretrained)
    model = _build(
        num_classes, backbone, pretrained, trainable_layers, frozen_bn, kwargs,
        make_model=MaskRCNN, load=load_mask_rcnn_weights,
    )  # fmt: skip
    assert isinstance(model, MaskRCNN)
    return model
