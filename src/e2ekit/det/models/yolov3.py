"""YOLOv3 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018), trained the way
PaddleDetection's ``YOLOv3Loss`` + ``Gt2YoloTarget`` do.

- Neck: the YOLOv3 FPN. From C5 down, a detection block (five alternating 1x1/3x3 convs)
  gives a *route*; a 3x3 conv on it gives the head's *tip*; the route is reduced by a 1x1
  conv, upsampled x2 and concatenated with the next finer backbone map.
- Head: a 1x1 conv per level predicting, for each of its 3 anchors, ``tx, ty, tw, th, obj``
  and ``num_classes`` class logits.
- Decode: ``cx = (sigmoid(tx) + grid_x) * stride``, ``w = exp(tw) * anchor_w``;
  score = ``sigmoid(obj) * sigmoid(cls)``; boxes clipped to the image.
- Targets: each GT box goes to the one anchor (of all 9) whose shape (w, h centred at the
  origin) has the highest IoU with it, at the level owning that anchor and the grid cell
  holding the box centre.
- Loss, summed over levels, each term summed over the image and averaged over the batch:
  ``loss_xy`` BCE between ``sigmoid(tx)`` and the centre's offset in its cell, ``loss_wh``
  L1 between ``tw`` and ``log(w / anchor_w)``, both weighted by ``2 - w * h`` (w, h relative
  to the image) so small boxes count more; ``loss_obj`` BCE, positives at matched anchors,
  negatives everywhere else except predictions whose decoded box overlaps some GT by more
  than ``ignore_thresh`` (0.7); ``loss_cls`` per-class BCE at matched anchors (no label
  smoothing).

Anchors are (w, h) in input pixels, one list of 3 per level in stride order 8/16/32; the
default ones are the COCO k-means anchors of the paper (defined for 416/608 px inputs). The
objectness bias starts at the prior log(0.01 / 0.99) (RetinaNet's init) so the sum over
thousands of negative cells does not swamp the first steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from e2ekit.core.errors import ConfigError
from e2ekit.det.backbones.darknet import ConvBNLeaky
from e2ekit.det.models.base import Detector, Target, build_backbone, clip_boxes
from e2ekit.det.registry import MODELS

__all__ = [
    "COCO_ANCHORS",
    "YOLOv3",
    "YOLOv3FPN",
    "assign_targets",
    "yolov3_darknet53",
    "yolov3_mobilenet_v3",
    "yolov3_tiny",
]

# (w, h) in pixels, per level in stride order 8 / 16 / 32 (PaddleDetection's anchor_masks
# [[6, 7, 8], [3, 4, 5], [0, 1, 2]] list them coarse level first).
COCO_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
STRIDES = (8, 16, 32)
_MAX_LOG_WH = 10.0  # exp() cap when decoding, so a wild tw cannot overflow to inf


def _anchor_tensor(anchors: Any, levels: int) -> torch.Tensor:
    """(levels, A, 2) float from nested per-level lists or a flat list of (w, h) pairs."""
    t = torch.as_tensor(anchors, dtype=torch.float32)
    if t.dim() == 2 and t.shape[1] == 2 and t.shape[0] % levels == 0:
        t = t.view(levels, -1, 2)
    if t.dim() != 3 or t.shape[0] != levels or t.shape[2] != 2 or t.shape[1] < 1:
        raise ConfigError(
            f"anchors must be {levels} lists of (w, h) pairs (or a flat list of pairs divisible "
            f"into {levels} levels), got shape {tuple(t.shape)}"
        )
    if (t <= 0).any():
        raise ConfigError("anchor widths and heights must be > 0")
    return t


class DetBlock(nn.Module):
    """YOLOv3 detection block: 1x1/3x3/1x1/3x3/1x1 -> route, then 3x3 -> tip (2x channels)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvBNLeaky(in_channels, channels, 1),
            ConvBNLeaky(channels, channels * 2, 3),
            ConvBNLeaky(channels * 2, channels, 1),
            ConvBNLeaky(channels, channels * 2, 3),
            ConvBNLeaky(channels * 2, channels, 1),
        )
        self.tip = ConvBNLeaky(channels, channels * 2, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.convs(x)
        return route, self.tip(route)


class YOLOv3FPN(nn.Module):
    """Top-down YOLOv3 neck; ``channels[i]`` is level i's route width (tips are twice that).

    Levels are in stride order (finest first); the output is one tip per level.
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(channels):
            raise ConfigError(
                f"neck_channels {list(channels)} must have one entry per level ({len(in_channels)})"
            )
        n = len(channels)
        blocks: list[nn.Module] = []
        for i in range(n):
            lateral = channels[i + 1] // 2 if i < n - 1 else 0
            blocks.append(DetBlock(in_channels[i] + lateral, channels[i]))
        self.blocks = nn.ModuleList(blocks)
        # transitions[i]: level i + 1's route -> half width, before upsampling onto level i
        self.transitions = nn.ModuleList(
            ConvBNLeaky(channels[i + 1], channels[i + 1] // 2, 1) for i in range(n - 1)
        )
        self.out_channels = [2 * c for c in channels]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        tips: list[torch.Tensor] = [feats[0]] * len(feats)
        route: torch.Tensor | None = None
        for i in reversed(range(len(feats))):
            x = feats[i]
            if route is not None:
                up = F.interpolate(self.transitions[i](route), size=x.shape[-2:], mode="nearest")
                x = torch.cat([up, x], dim=1)
            route, tips[i] = self.blocks[i](x)
        return tips


def assign_targets(
    boxes: torch.Tensor,
    anchors: torch.Tensor,
    strides: Sequence[int],
    grid_sizes: Sequence[tuple[int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match each box to its best anchor by shape IoU over all levels, and to a grid cell.

    Args:
        boxes: (N, 4) xyxy in input pixels, all with positive width and height.
        anchors: (L, A, 2) anchor (w, h) per level in input pixels.
        strides: stride of each level.
        grid_sizes: (H, W) of each level's map.

    Returns:
        ``level``, ``anchor`` (index within the level), ``gy``, ``gx`` (the cell holding the
        box centre), each (N,) int64. Ties go to the first (smallest) anchor.
    """
    n_anchors = anchors.shape[1]
    wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    flat = anchors.reshape(-1, 2).to(wh)  # (L * A, 2)
    inter = torch.minimum(wh[:, None, :], flat[None, :, :]).prod(-1)  # (N, L * A)
    union = wh.prod(-1)[:, None] + flat.prod(-1)[None, :] - inter
    best = (inter / union).argmax(dim=1)
    level = best // n_anchors
    anchor = best % n_anchors
    stride = torch.as_tensor(strides, dtype=wh.dtype, device=wh.device)[level]
    sizes = torch.as_tensor(grid_sizes, dtype=torch.long, device=wh.device)[level]  # (N, 2)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    gx = torch.minimum((centre[:, 0] / stride).floor().long().clamp(min=0), sizes[:, 1] - 1)
    gy = torch.minimum((centre[:, 1] / stride).floor().long().clamp(min=0), sizes[:, 0] - 1)
    return level, anchor, gy, gx


class YOLOv3(Detector):
    """YOLOv3 on any backbone with maps at strides 8/16/32 (see the module docstring).

    Args:
        num_classes: foreground classes.
        backbone: feature extractor; ``feature_indices`` pick its stride-8/16/32 maps.
        in_channels: channels of those three maps.
        anchors: (w, h) pixels, 3 levels x A anchors (nested or flat), stride order.
        neck_channels: route width per level, stride order (tips are twice as wide).
        ignore_thresh: predictions overlapping a GT by more than this are not negatives.
        **kwargs: post-processing options of :class:`Detector`.
    """

    # One 1x1 conv per level emits tx, ty, tw, th, obj and class logits: one per-tensor
    # uint8 range over all of them rounds the box offsets coarsely (tiny YOLOv3 on shapes,
    # all int8: mAP -0.024; output convs float: -0.0025 at ~1% of the compute).
    int8_keep_final_float = True

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        feature_indices: Sequence[int],
        in_channels: Sequence[int],
        anchors: Any = COCO_ANCHORS,
        neck_channels: Sequence[int] = (128, 256, 512),
        ignore_thresh: float = 0.7,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        self.strides = STRIDES
        self.backbone = backbone
        self.feature_indices = list(feature_indices)
        self.register_buffer("anchors", _anchor_tensor(anchors, len(STRIDES)))  # (L, A, 2)
        self.num_anchors = self.anchors.shape[1]
        self.ignore_thresh = float(ignore_thresh)
        self.neck = YOLOv3FPN(in_channels, neck_channels)
        outputs = self.num_anchors * (5 + num_classes)
        self.heads = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in self.neck.out_channels)
        prior = math.log(0.01 / 0.99)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.01)
            bias = head.bias.detach().view(self.num_anchors, 5 + num_classes)
            bias.zero_()
            bias[:, 4] = prior

    def predict_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw head outputs per level, (B, A, H, W, 5 + C): tx, ty, tw, th, obj, classes."""
        feats = self.backbone(images)
        tips = self.neck([feats[i] for i in self.feature_indices])
        preds = []
        for head, tip in zip(self.heads, tips, strict=True):
            out = head(tip)
            b, _, h, w = out.shape  # traced sizes (unflatten would freeze them in ONNX)
            out = out.view(b, self.num_anchors, 5 + self.num_classes, h, w)
            preds.append(out.permute(0, 1, 3, 4, 2))  # (B, A, H, W, 5 + C)
        return preds

    def decode(self, pred: torch.Tensor, level: int) -> torch.Tensor:
        """(B, A, H, W, 5 + C) raw outputs -> (B, A, H, W, 4) xyxy boxes in input pixels."""
        stride = self.strides[level]
        gy = torch.arange(pred.shape[2], device=pred.device, dtype=pred.dtype).view(-1, 1)
        gx = torch.arange(pred.shape[3], device=pred.device, dtype=pred.dtype).view(1, -1)
        anchors = self.anchors[level].to(pred.dtype)  # (A, 2)
        cx = (pred[..., 0].sigmoid() + gx) * stride  # (B, A, H, W)
        cy = (pred[..., 1].sigmoid() + gy) * stride
        half_w = pred[..., 2].clamp(max=_MAX_LOG_WH).exp() * anchors[:, 0].view(1, -1, 1, 1) / 2
        half_h = pred[..., 3].clamp(max=_MAX_LOG_WH).exp() * anchors[:, 1].view(1, -1, 1, 1) / 2
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = [], []
        for level, pred in enumerate(self.predict_maps(images)):
            boxes.append(self.decode(pred, level).flatten(1, 3))  # (B, A*H*W, 4)
            prob = pred[..., 4:5].sigmoid() * pred[..., 5:].sigmoid()  # (B, A, H, W, C)
            scores.append(prob.flatten(1, 3))
        return clip_boxes(torch.cat(boxes, dim=1), images), torch.cat(scores, dim=1)

    def losses(self, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        preds = [p.float() for p in self.predict_maps(images)]
        batch = images.shape[0]
        img_h, img_w = images.shape[-2:]
        gt_boxes, gt_labels, gt_batch = [], [], []
        for b, t in enumerate(targets):
            boxes = t["boxes"].to(images.device, torch.float32).reshape(-1, 4)
            labels = t["labels"].to(images.device, torch.long).reshape(-1)
            if labels.numel() != boxes.shape[0]:
                raise ValueError(f"image {b}: {boxes.shape[0]} boxes but {labels.numel()} labels")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image {b}: labels must lie in 0..{self.num_classes - 1}")
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            gt_boxes.append(boxes[valid])
            gt_labels.append(labels[valid])
            gt_batch.append(torch.full_like(labels[valid], b))
        boxes, labels, bidx = torch.cat(gt_boxes), torch.cat(gt_labels), torch.cat(gt_batch)
        grid_sizes = [(p.shape[2], p.shape[3]) for p in preds]
        level, anchor, gy, gx = assign_targets(boxes, self.anchors, self.strides, grid_sizes)

        zero = preds[0].sum() * 0.0  # keeps the graph when a level has no positives
        total = {"loss_xy": zero, "loss_wh": zero, "loss_obj": zero, "loss_cls": zero}
        for lvl, pred in enumerate(preds):
            _, n_a, h, w, _ = pred.shape
            m = level == lvl
            b, a, j, i = bidx[m], anchor[m], gy[m], gx[m]
            lb, ll = boxes[m], labels[m]
            # Two GTs on one (image, anchor, cell): the later one's box wins, classes add up
            # (PaddleDetection's Gt2YoloTarget writes them in order).
            key = ((b * n_a + a) * h + j) * w + i
            uniq, inverse = torch.unique(key, return_inverse=True)
            last = torch.full_like(uniq, -1).scatter_reduce(
                0, inverse, torch.arange(len(key), device=key.device), "amax"
            )
            b, a, j, i, lb = b[last], a[last], j[last], i[last], lb[last]
            pos = pred[b, a, j, i]  # (P, 5 + C)
            stride = self.strides[lvl]
            anc = self.anchors[lvl][a]  # (P, 2)
            bw, bh = lb[:, 2] - lb[:, 0], lb[:, 3] - lb[:, 1]
            tx = (lb[:, 0] + lb[:, 2]) / 2 / stride - i
            ty = (lb[:, 1] + lb[:, 3]) / 2 / stride - j
            tw, th = torch.log(bw / anc[:, 0]), torch.log(bh / anc[:, 1])
            scale = 2.0 - (bw / img_w) * (bh / img_h)
            bce = F.binary_cross_entropy_with_logits
            loss_xy = bce(pos[:, 0], tx, reduction="none") + bce(pos[:, 1], ty, reduction="none")
            loss_wh = (pos[:, 2] - tw).abs() + (pos[:, 3] - th).abs()
            tcls = torch.zeros_like(pos[:, 5:])
            tcls[inverse, ll] = 1.0  # every GT of the slot contributes its class
            loss_cls = bce(pos[:, 5:], tcls, reduction="none").sum(1)

            obj_t = torch.zeros_like(pred[..., 4])  # (B, A, H, W)
            obj_t[b, a, j, i] = 1.0
            with torch.no_grad():
                ignore = self._ignore_mask(pred, lvl, boxes, bidx, batch)
            obj_weight = obj_t + (1.0 - obj_t) * (~ignore).to(obj_t)
            loss_obj = bce(pred[..., 4], obj_t, reduction="none") * obj_weight

            total["loss_xy"] = total["loss_xy"] + (loss_xy * scale).sum() / batch
            total["loss_wh"] = total["loss_wh"] + (loss_wh * scale).sum() / batch
            total["loss_obj"] = total["loss_obj"] + loss_obj.sum() / batch
            total["loss_cls"] = total["loss_cls"] + loss_cls.sum() / batch
        return total

    def _ignore_mask(
        self,
        pred: torch.Tensor,
        level: int,
        boxes: torch.Tensor,
        bidx: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """(B, A, H, W) True where the decoded box's best IoU with a GT exceeds the threshold."""
        decoded = self.decode(pred.detach(), level)  # (B, A, H, W, 4)
        ignore = torch.zeros(decoded.shape[:-1], dtype=torch.bool, device=pred.device)
        for b in range(batch):
            gt = boxes[bidx == b]
            if len(gt):
                iou = box_iou(decoded[b].reshape(-1, 4), gt)  # (A*H*W, N)
                ignore[b] = (iou.amax(dim=1) > self.ignore_thresh).view(ignore.shape[1:])
        return ignore


def _create_yolov3(
    num_classes: int,
    backbone: dict[str, Any] | None,
    default_backbone: dict[str, Any],
    anchors: Any,
    neck_channels: Sequence[int],
    **kwargs: Any,
) -> YOLOv3:
    net, indices = build_backbone(backbone, default_backbone, STRIDES)
    in_channels = [net.out_channels[i] for i in indices]
    return YOLOv3(num_classes, net, indices, in_channels, anchors, neck_channels, **kwargs)


@MODELS.register("yolov3_darknet53")
def yolov3_darknet53(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    anchors: Any = COCO_ANCHORS,
    neck_channels: Sequence[int] = (128, 256, 512),
    ignore_thresh: float = 0.7,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    weighted_nms: bool = False,
) -> YOLOv3:
    """YOLOv3 with DarkNet-53 and the full neck (62M parameters at 80 classes)."""
    return _create_yolov3(
        num_classes,
        backbone,
        {"type": "darknet53"},
        anchors,
        neck_channels,
        ignore_thresh=ignore_thresh,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        pre_nms_topk=pre_nms_topk,
        weighted_nms=weighted_nms,
    )


@MODELS.register("yolov3_mobilenet_v3")
def yolov3_mobilenet_v3(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    anchors: Any = COCO_ANCHORS,
    neck_channels: Sequence[int] = (128, 256, 512),
    ignore_thresh: float = 0.7,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    weighted_nms: bool = False,
) -> YOLOv3:
    """YOLOv3 on MobileNetV3-Large (torchvision) with the full YOLOv3 neck, as PaddleDetection's
    ``yolov3_mobilenet_v3_large``.
    """
    return _create_yolov3(
        num_classes,
        backbone,
        {"type": "mobilenet_v3_large"},
        anchors,
        neck_channels,
        ignore_thresh=ignore_thresh,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        pre_nms_topk=pre_nms_topk,
        weighted_nms=weighted_nms,
    )


# COCO anchors halved: sized for the 160-320 px inputs the tiny variant is trained on.
TINY_ANCHORS = tuple(tuple((w // 2, h // 2) for w, h in level) for level in COCO_ANCHORS)


@MODELS.register("yolov3_tiny")
def yolov3_tiny(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    anchors: Any = TINY_ANCHORS,
    neck_channels: Sequence[int] = (32, 64, 128),
    ignore_thresh: float = 0.7,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
    pre_nms_topk: int = 1000,
    weighted_nms: bool = False,
) -> YOLOv3:
    """YOLOv3 on a narrow DarkNet (``darknet53_tiny``) with a quarter-width neck: for tests
    and CPU runs on 160-320 px images. Not the paper's YOLOv3-tiny; anchors default to the
    COCO ones halved (pass ``anchors`` sized for your input).
    """
    return _create_yolov3(
        num_classes,
        backbone,
        {"type": "darknet53_tiny"},
        anchors,
        neck_channels,
        ignore_thresh=ignore_thresh,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        pre_nms_topk=pre_nms_topk,
        weighted_nms=weighted_nms,
    )
