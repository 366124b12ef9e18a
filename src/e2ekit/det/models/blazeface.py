"""BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
GPUs", CVPR workshops 2019), the front-camera model, as an SSD-style detector.

- Backbone: BlazeNet (``e2ekit.det.backbones.blazenet``), maps at strides 8 and 16.
- Anchors: MediaPipe's SSD anchor calculator for the front model (``num_layers`` 4,
  ``min_scale`` 0.1484375, ``max_scale`` 0.75, strides [8, 16, 16, 16], aspect ratio 1 plus
  the interpolated scale per layer); layers sharing a stride share a grid, so a 128 px input
  has 16x16 cells with 2 anchors and 8x8 cells with 6 anchors (896 in all). Anchors are
  square in *normalised* coordinates (scale x image side), centred on their cell, ordered
  (row, column, anchor) as in MediaPipe.
- Head: a 3x3 conv per level for class logits and one for box offsets.
- Boxes: SSD encoding with variances (0.1, 0.2): ``dx = (gx - ax) / (0.1 aw)``,
  ``dw = log(gw / aw) / 0.2``.
- Matching: an anchor is positive when its IoU with a GT reaches ``pos_iou`` (0.5), and each
  GT also claims its best anchor; the rest are background.
- Loss: smooth L1 on the positives' offsets plus, by default, softmax cross entropy with hard
  negative mining (the ``neg_pos_ratio`` = 3 highest-loss negatives per positive), both
  divided by the number of positives; ``cls_loss="focal"`` uses sigmoid focal loss over all
  anchors instead (no mining).
- NMS: standard class-wise NMS by default; ``weighted_nms=True`` is the paper's blending.

The six face keypoints of the MediaPipe model are not predicted (the kit's contract is boxes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, sigmoid_focal_loss

from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Detector, Target, build_backbone, clip_boxes
from e2ekit.det.registry import MODELS

__all__ = [
    "BlazeFace",
    "blazeface",
    "blazeface_tiny",
    "decode",
    "encode",
    "hard_negatives",
    "ssd_anchor_scales",
]

_VARIANCES = (0.1, 0.2)
_MAX_LOG_WH = math.log(1000.0 / 16)  # torchvision's BoxCoder clip on exp()


def ssd_anchor_scales(
    strides: Sequence[int] = (8, 16, 16, 16),
    min_scale: float = 0.1484375,
    max_scale: float = 0.75,
) -> dict[int, list[float]]:
    """Anchor sizes (fraction of the image side) per stride, MediaPipe ``SsdAnchorsCalculator``
    with aspect ratio 1 and ``interpolated_scale_aspect_ratio`` 1.

    Layer i has scale ``s_i`` linear from ``min_scale`` to ``max_scale`` and adds
    ``sqrt(s_i * s_{i+1})`` (``s_n = 1``); layers with the same stride share one grid.
    """
    n = len(strides)
    scales = (
        [min_scale + (max_scale - min_scale) * i / (n - 1) for i in range(n)]
        if n > 1
        else [(min_scale + max_scale) / 2]
    )
    per_stride: dict[int, list[float]] = {}
    for i, stride in enumerate(strides):
        following = scales[i + 1] if i + 1 < n else 1.0
        per_stride.setdefault(stride, []).extend([scales[i], math.sqrt(scales[i] * following)])
    return per_stride


def _cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    wh = boxes[..., 2:] - boxes[..., :2]
    return torch.cat([boxes[..., :2] + wh / 2, wh], dim=-1)


def encode(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """SSD offsets of xyxy ``gt`` w.r.t. xyxy ``anchors`` (same shape (..., 4))."""
    g, a = _cxcywh(gt), _cxcywh(anchors)
    dxy = (g[..., :2] - a[..., :2]) / (a[..., 2:] * _VARIANCES[0])
    dwh = torch.log(g[..., 2:] / a[..., 2:]) / _VARIANCES[1]
    return torch.cat([dxy, dwh], dim=-1)


def decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: xyxy boxes from offsets (..., 4) and xyxy anchors."""
    a = _cxcywh(anchors)
    cxy = a[..., :2] + offsets[..., :2] * _VARIANCES[0] * a[..., 2:]
    wh = a[..., 2:] * (offsets[..., 2:] * _VARIANCES[1]).clamp(max=_MAX_LOG_WH).exp()
    return torch.cat([cxy - wh / 2, cxy + wh / 2], dim=-1)


def hard_negatives(loss: torch.Tensor, pos: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, A) mask of each image's ``ratio * max(positives, 1)`` highest-``loss`` negatives."""
    n_neg = (pos.sum(dim=1).clamp(min=1) * ratio).long()  # (B,)
    neg_loss = loss.detach().masked_fill(pos, -math.inf)
    rank = neg_loss.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = hardest
    return (rank < n_neg[:, None]) & ~pos


class BlazeFace(Detector):
    """SSD-style single-shot detector on BlazeNet (see the module docstring).

    Args:
        num_classes: foreground classes (1 for faces); background is added internally.
        backbone: feature extractor; ``feature_indices`` pick its maps at ``strides``.
        in_channels: channels of those maps.
        strides: feature strides, one per key of ``anchor_scales``.
        anchor_scales: anchor sizes (fraction of the image side) per stride.
        cls_loss: ``"ce"`` (softmax + hard negative mining) or ``"focal"`` (sigmoid focal).
        pos_iou: IoU making an anchor positive.
        neg_pos_ratio: hard negatives kept per positive (``"ce"`` only).
        **kwargs: post-processing options of :class:`Detector`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        feature_indices: Sequence[int],
        in_channels: Sequence[int],
        strides: Sequence[int],
        anchor_scales: dict[int, list[float]],
        cls_loss: str = "ce",
        pos_iou: float = 0.5,
        neg_pos_ratio: float = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        if cls_loss not in ("ce", "focal"):
            raise ConfigError(f"cls_loss must be 'ce' or 'focal', got {cls_loss!r}")
        self.backbone = backbone
        self.feature_indices = list(feature_indices)
        self.strides = tuple(strides)
        self.cls_loss = cls_loss
        self.pos_iou = float(pos_iou)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.anchor_scales = [list(anchor_scales[s]) for s in self.strides]
        self.cls_outputs = num_classes + 1 if cls_loss == "ce" else num_classes
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(c, len(a) * self.cls_outputs, 3, padding=1)
            for c, a in zip(in_channels, self.anchor_scales, strict=True)
        )
        self.box_heads = nn.ModuleList(
            nn.Conv2d(c, len(a) * 4, 3, padding=1)
            for c, a in zip(in_channels, self.anchor_scales, strict=True)
        )
        for head in (*self.cls_heads, *self.box_heads):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        if cls_loss == "focal":
            for head in self.cls_heads:
                nn.init.constant_(head.bias, math.log(0.01 / 0.99))

    def anchors(self, images: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(A, 4) xyxy anchors in input pixels, ordered (level, row, column, anchor)."""
        size = torch._shape_as_tensor(images)[-2:].flip(0).to(feats[0])  # (w, h)
        out = []
        for feat, scales in zip(feats, self.anchor_scales, strict=True):
            fh, fw = feat.shape[-2:]
            ys = (torch.arange(fh, device=feat.device, dtype=feat.dtype) + 0.5) / fh
            xs = (torch.arange(fw, device=feat.device, dtype=feat.dtype) + 0.5) / fw
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (fh, fw)
            s = torch.tensor(scales, device=feat.device, dtype=feat.dtype)  # (k,)
            centre = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(-1, -1, len(scales), -1)
            half = (s[:, None] / 2).expand(-1, 2)  # (k, 2) square in normalised coords
            box = torch.cat([centre - half, centre + half], dim=-1)  # (fh, fw, k, 4)
            out.append(box.reshape(-1, 4))
        return torch.cat(out, dim=0) * size.repeat(2)  # normalised -> pixels

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits (B, A, K), box offsets (B, A, 4) and anchors (A, 4)."""
        all_feats = self.backbone(images)
        feats = [all_feats[i] for i in self.feature_indices]
        logits, offsets = [], []
        for feat, cls_head, box_head in zip(feats, self.cls_heads, self.box_heads, strict=True):
            # (B, k*K, H, W) -> (B, H, W, k*K) -> (B, H*W*k, K)
            logits.append(
                cls_head(feat).permute(0, 2, 3, 1).reshape(feat.shape[0], -1, self.cls_outputs)
            )
            offsets.append(box_head(feat).permute(0, 2, 3, 1).reshape(feat.shape[0], -1, 4))
        return torch.cat(logits, 1), torch.cat(offsets, 1), self.anchors(images, feats)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offsets, anchors = self.predict(images)
        boxes = clip_boxes(decode(offsets, anchors[None]), images)
        if self.cls_loss == "ce":
            return boxes, logits.softmax(dim=-1)[..., 1:]  # drop the background column
        return boxes, logits.sigmoid()

    def match(self, anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """(A,) index of the GT each anchor regresses, -1 for background."""
        matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        if gt.shape[0] == 0:
            return matched
        iou = box_iou(anchors, gt)  # (A, N)
        best_iou, best_gt = iou.max(dim=1)
        matched = torch.where(best_iou >= self.pos_iou, best_gt, matched)
        matched[iou.argmax(dim=0)] = torch.arange(gt.shape[0], device=gt.device)  # GT's best
        return matched

    def losses(self, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        logits, offsets, anchors = self.predict(images)
        logits, offsets = logits.float(), offsets.float()
        anchors = anchors.float()
        labels, box_targets = [], []
        for b, t in enumerate(targets):
            gt = t["boxes"].to(images.device, torch.float32).reshape(-1, 4)
            gl = t["labels"].to(images.device, torch.long).reshape(-1)
            if gl.numel() != gt.shape[0]:
                raise ValueError(f"image {b}: {gt.shape[0]} boxes but {gl.numel()} labels")
            if gl.numel() and (gl.min() < 0 or gl.max() >= self.num_classes):
                raise ValueError(f"image {b}: labels must lie in 0..{self.num_classes - 1}")
            keep = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
            gt, gl = gt[keep], gl[keep]
            m = self.match(anchors, gt)
            pos = m >= 0
            labels.append(torch.where(pos, gl[m.clamp(min=0)] + 1, 0) if len(gl) else m + 1)
            matched_boxes = gt[m.clamp(min=0)] if len(gl) else anchors
            box_targets.append(encode(matched_boxes, anchors))
        target = torch.stack(labels)  # (B, A), 0 = background
        box_target = torch.stack(box_targets)  # (B, A, 4)
        pos = target > 0
        num_pos = pos.sum().clamp(min=1).float()
        loss_box = F.smooth_l1_loss(offsets[pos], box_target[pos], beta=1.0, reduction="sum")
        if self.cls_loss == "ce":
            ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, A)
            loss_cls = ce[pos | hard_negatives(ce, pos, self.neg_pos_ratio)].sum()
        else:
            one_hot = F.one_hot(target, self.num_classes + 1)[..., 1:].to(logits)
            loss_cls = sigmoid_focal_loss(logits, one_hot, reduction="sum")
        return {"loss_box": loss_box / num_pos, "loss_cls": loss_cls / num_pos}


def _create_blazeface(
    num_classes: int,
    backbone: dict[str, Any] | None,
    default_backbone: dict[str, Any],
    anchor_strides: Sequence[int],
    min_scale: float,
    max_scale: float,
    **kwargs: Any,
) -> BlazeFace:
    scales = ssd_anchor_scales(anchor_strides, min_scale, max_scale)
    strides = sorted(scales)
    net, indices = build_backbone(backbone, default_backbone, strides)
    in_channels = [net.out_channels[i] for i in indices]
    return BlazeFace(num_classes, net, indices, in_channels, strides, scales, **kwargs)


@MODELS.register("blazeface")
def blazeface(
    num_classes: int = 1,
    backbone: dict[str, Any] | None = None,
    anchor_strides: Sequence[int] = (8, 16, 16, 16),
    min_scale: float = 0.1484375,
    max_scale: float = 0.75,
    cls_loss: str = "ce",
    pos_iou: float = 0.5,
    neg_pos_ratio: float = 3.0,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    weighted_nms: bool = False,
) -> BlazeFace:
    """BlazeFace front model (128x128 inputs; any multiple of 16 runs), 896 anchors at 128 px."""
    return _create_blazeface(
        num_classes,
        backbone,
        {"type": "blazenet"},
        anchor_strides,
        min_scale,
        max_scale,
        cls_loss=cls_loss,
        pos_iou=pos_iou,
        neg_pos_ratio=neg_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        pre_nms_topk=pre_nms_topk,
        weighted_nms=weighted_nms,
    )


@MODELS.register("blazeface_tiny")
def blazeface_tiny(
    num_classes: int = 1,
    backbone: dict[str, Any] | None = None,
    anchor_strides: Sequence[int] = (8, 16, 16, 16),
    min_scale: float = 0.1484375,
    max_scale: float = 0.75,
    cls_loss: str = "ce",
    pos_iou: float = 0.5,
    neg_pos_ratio: float = 3.0,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    weighted_nms: bool = False,
) -> BlazeFace:
    """BlazeFace with the 5-block ``blazenet_tiny`` backbone and the same anchors, for tests."""
    return _create_blazeface(
        num_classes,
        backbone,
        {"type": "blazenet_tiny"},
        anchor_strides,
        min_scale,
        max_scale,
        cls_loss=cls_loss,
        pos_iou=pos_iou,
        neg_pos_ratio=neg_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        pre_nms_topk=pre_nms_topk,
        weighted_nms=weighted_nms,
    )
