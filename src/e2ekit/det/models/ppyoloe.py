"""PP-YOLOE (Xu et al., "PP-YOLOE: An evolved version of YOLO", 2022), trained the way
PaddleDetection's ``PPYOLOEHead`` does.

- Backbone: CSPRepResNet (:mod:`e2ekit.det.backbones.cspresnet`), maps at strides 8/16/32.
- Neck: CustomCSPPAN. Top-down, from C5: a CSP stage (``block_num`` conv + RepVGG blocks, SPP
  in the coarsest stage) per level, its output halved by a 1x1 conv, upsampled x2 and
  concatenated with the next finer map; bottom-up, a stride-2 3x3 conv on each output is
  concatenated with the next coarser top-down map and run through another CSP stage.
- Head (ET-head), per level: ``avg = mean_hw(x)``; class branch ``conv3x3(ESE(x, avg) + x)``,
  box branch ``conv3x3(ESE(x, avg))`` where ``ESE(x, avg) = ConvBNAct1x1(x * sigmoid(fc(avg)))``.
  The box branch predicts, per side (l, t, r, b), a distribution over ``reg_max + 1`` bins of
  distance in strides; its expectation is the distance. Anchor-free: one point per cell.
- Decode: ``xyxy = (cx - l, cy - t, cx + r, cy + b) * stride`` around the cell centre;
  score = ``sigmoid(logit)`` per class; boxes clipped to the image.
- Training targets: ATSS (anchors ``grid_cell_scale * stride`` wide, top 9 per level) for the
  first ``static_assigner_epoch`` epochs, then the task-aligned assigner (top 13, ``alpha``
  1, ``beta`` 6) on the detached predictions. Losses, each normalised by the sum of the soft
  class targets: varifocal loss on the class logits (targets: the assigner's IoU-aware
  scores), GIoU and distribution focal loss on positives weighted by their target score;
  weights class 1.0, iou 2.5, dfl 0.5.

The engine's Trainer sets ``PPYOLOE.epoch`` at each epoch (the model declares
``tracks_epoch``); trained outside it without setting the epoch, a model with
``static_assigner_epoch > 0`` refuses to train rather than silently skip the ATSS phase.

Eval mode runs each RepVGG block as one fused 3x3 conv (see the backbone), so exports carry
the fused graph; ``PPYOLOE.fuse()`` fuses for good.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from e2ekit.core.errors import ConfigError
from e2ekit.det.assigners import atss_assign, task_aligned_assign
from e2ekit.det.backbones.cspresnet import BasicBlock, ConvBNAct, fuse_repvgg
from e2ekit.det.losses import distribution_focal_loss, integral, varifocal_loss
from e2ekit.det.models.base import Detector, Target, build_backbone, clip_boxes
from e2ekit.det.registry import MODELS

__all__ = [
    "PPYOLOE",
    "CustomCSPPAN",
    "ESEAttn",
    "ppyoloe_m",
    "ppyoloe_s",
    "ppyoloe_tiny",
]

STRIDES = (8, 16, 32)
NECK_CHANNELS = (192, 384, 768)  # stride order, before width_mult
DEFAULT_LOSS_WEIGHTS = {"class": 1.0, "iou": 2.5, "dfl": 0.5}


class SPP(nn.Module):
    """Concatenate ``x`` with its 5/9/13 max-pools (stride 1), then a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, pools: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in pools)
        self.conv = ConvBNAct(in_channels * (len(pools) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, *(p(x) for p in self.pools)], dim=1))


class CSPStage(nn.Module):
    """Neck stage: two 1x1 halves, one through ``depth`` plain blocks (+ SPP), 1x1 fusion."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, spp: bool = False):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = ConvBNAct(in_channels, mid, 1)
        self.conv2 = ConvBNAct(in_channels, mid, 1)
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks.append(BasicBlock(mid, mid, shortcut=False))
            if spp and i == (depth - 1) // 2:
                blocks.append(SPP(mid, mid))
        self.blocks = nn.Sequential(*blocks)
        self.conv3 = ConvBNAct(mid * 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.conv1(x), self.blocks(self.conv2(x))], dim=1))


class CustomCSPPAN(nn.Module):
    """PP-YOLOE's PAN neck (module docstring); levels in stride order, finest first.

    Args:
        in_channels: backbone channels per level.
        out_channels: output channels per level.
        depth: blocks per CSP stage.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], depth: int = 3):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ConfigError(
                f"neck_channels {list(out_channels)} must have one entry per level "
                f"({len(in_channels)})"
            )
        n = len(in_channels)
        self.out_channels = list(out_channels)
        # top-down, coarse to fine: index i is level n - 1 - i
        fpn_stages, fpn_routes = [], []
        prev = 0
        for i in range(n):
            lvl = n - 1 - i
            ch_in = in_channels[lvl] + (prev // 2 if i else 0)
            fpn_stages.append(CSPStage(ch_in, out_channels[lvl], depth, spp=i == 0))
            if i < n - 1:
                fpn_routes.append(ConvBNAct(out_channels[lvl], out_channels[lvl] // 2, 1))
            prev = out_channels[lvl]
        self.fpn_stages = nn.ModuleList(fpn_stages)
        self.fpn_routes = nn.ModuleList(fpn_routes)
        # bottom-up: pan_*[lvl] carries level lvl up to level lvl + 1
        self.pan_routes = nn.ModuleList(
            ConvBNAct(out_channels[lvl], out_channels[lvl], 3, 2) for lvl in range(n - 1)
        )
        self.pan_stages = nn.ModuleList(
            CSPStage(out_channels[lvl] + out_channels[lvl + 1], out_channels[lvl + 1], depth)
            for lvl in range(n - 1)
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n = len(feats)
        top_down: list[torch.Tensor] = [feats[0]] * n
        route: torch.Tensor | None = None
        for i in range(n):
            lvl = n - 1 - i
            x = feats[lvl]
            if route is not None:
                up = F.interpolate(route, size=x.shape[-2:], mode="nearest")
                x = torch.cat([up, x], dim=1)
            top_down[lvl] = self.fpn_stages[i](x)
            if i < n - 1:
                route = self.fpn_routes[i](top_down[lvl])
        outs = [top_down[0]]
        for lvl in range(n - 1):
            down = self.pan_routes[lvl](outs[-1])
            x = top_down[lvl + 1]
            if down.shape[-2:] != x.shape[-2:]:  # odd sizes: match the coarser map
                down = F.interpolate(down, size=x.shape[-2:], mode="nearest")
            outs.append(self.pan_stages[lvl](torch.cat([down, x], dim=1)))
        return outs


class ESEAttn(nn.Module):
    """Head attention: ``ConvBNAct1x1(x * sigmoid(fc(avg)))`` with ``avg`` the map's mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.conv = ConvBNAct(channels, channels, 1)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
        return self.conv(x * torch.sigmoid(self.fc(avg)))


class PPYOLOE(Detector):
    """PP-YOLOE on any backbone with maps at strides 8/16/32 (see the module docstring).

    Args:
        num_classes: foreground classes.
        backbone: feature extractor; ``feature_indices`` pick its stride-8/16/32 maps.
        in_channels: channels of those maps.
        neck_channels: neck (and head) width per level, stride order.
        neck_depth: blocks per neck CSP stage.
        reg_max: largest distance, in strides, of the box distributions (reg_max + 1 bins).
        static_assigner_epoch: epochs trained with ATSS before the task-aligned assigner.
        atss_topk: ATSS candidates per level.
        tal_topk, tal_alpha, tal_beta: task-aligned positives per gt and metric exponents.
        grid_cell_scale: ATSS anchor size in strides.
        loss_weights: ``class``, ``iou``, ``dfl`` weights.
        **kwargs: post-processing options of :class:`Detector`.
    """

    #: the Trainer sets ``epoch`` at each epoch (``core.engine.trainer.announce_epoch``)
    tracks_epoch: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        feature_indices: Sequence[int],
        in_channels: Sequence[int],
        neck_channels: Sequence[int],
        neck_depth: int = 3,
        reg_max: int = 16,
        static_assigner_epoch: int = 4,
        atss_topk: int = 9,
        tal_topk: int = 13,
        tal_alpha: float = 1.0,
        tal_beta: float = 6.0,
        grid_cell_scale: float = 5.0,
        loss_weights: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        unknown = sorted(set(weights) - set(DEFAULT_LOSS_WEIGHTS))
        if unknown:
            raise ConfigError(
                f"model.loss_weights: unknown {unknown}; the keys are class, iou and dfl"
            )
        if reg_max < 1 or static_assigner_epoch < 0 or atss_topk < 1 or tal_topk < 1:
            raise ConfigError(
                "model: reg_max, atss_topk and tal_topk must be >= 1 and static_assigner_epoch >= 0"
            )
        self.strides = STRIDES
        self.backbone = backbone
        self.feature_indices = list(feature_indices)
        self.neck = CustomCSPPAN(in_channels, neck_channels, neck_depth)
        self.reg_max = int(reg_max)
        self.static_assigner_epoch = int(static_assigner_epoch)
        self.atss_topk, self.tal_topk = int(atss_topk), int(tal_topk)
        self.tal_alpha, self.tal_beta = float(tal_alpha), float(tal_beta)
        self.grid_cell_scale = float(grid_cell_scale)
        self.loss_weights = weights
        #: the epoch being trained, set by the Trainer (None: not told); see ``tracks_epoch``
        self.epoch: int | None = None
        chans = self.neck.out_channels
        self.stem_cls = nn.ModuleList(ESEAttn(c) for c in chans)
        self.stem_reg = nn.ModuleList(ESEAttn(c) for c in chans)
        self.pred_cls = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in chans)
        self.pred_reg = nn.ModuleList(
            nn.Conv2d(c, 4 * (self.reg_max + 1), 3, padding=1) for c in chans
        )
        prior = -math.log((1 - 0.01) / 0.01)
        for cls_conv, reg_conv in zip(self.pred_cls, self.pred_reg, strict=True):
            nn.init.zeros_(cls_conv.weight)
            nn.init.constant_(cls_conv.bias, prior)
            nn.init.zeros_(reg_conv.weight)
            nn.init.constant_(reg_conv.bias, 1.0)

    def fuse(self) -> PPYOLOE:
        """Fuse every RepVGG block into one conv for good (inference only); returns self."""
        return fuse_repvgg(self)  # type: ignore[return-value]

    def predict_maps(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Class logits (B, L, C), distance logits (B, L, 4 * (reg_max + 1)), anchor points
        (L, 2) in input pixels, strides (L, 1) and the anchor count of each level."""
        feats = self.backbone(images)
        feats = self.neck([feats[i] for i in self.feature_indices])
        logits, dists, points, strides, counts = [], [], [], [], []
        for lvl, x in enumerate(feats):
            avg = x.mean((2, 3), keepdim=True)  # (B, c, 1, 1)
            cls = self.pred_cls[lvl](self.stem_cls[lvl](x, avg) + x)  # (B, C, H, W)
            reg = self.pred_reg[lvl](self.stem_reg[lvl](x, avg))  # (B, 4 * (reg_max + 1), H, W)
            logits.append(cls.flatten(2).transpose(1, 2))  # (B, H*W, C)
            dists.append(reg.flatten(2).transpose(1, 2))  # (B, H*W, 4 * (reg_max + 1))
            h, w = x.shape[-2:]
            stride = self.strides[lvl]
            ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * stride
            xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))  # (H*W, 2)
            strides.append(torch.full_like(points[-1][:, :1], stride))
            counts.append(h * w)
        return (
            torch.cat(logits, dim=1),
            torch.cat(dists, dim=1),
            torch.cat(points),
            torch.cat(strides),
            counts,
        )

    def decode(
        self, dists: torch.Tensor, points: torch.Tensor, strides: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, 4 * (reg_max + 1)) logits -> (B, L, 4) xyxy boxes in input pixels."""
        ltrb = integral(dists, self.reg_max) * strides  # (B, L, 4) pixels
        return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, dists, points, strides, _ = self.predict_maps(images)
        boxes = self.decode(dists, points, strides)
        return clip_boxes(boxes, images), logits.sigmoid()

    def _padded_targets(
        self, targets: Sequence[Target], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Labels (B, n), boxes (B, n, 4) and valid mask (B, n), padded to the most gts."""
        rows = []
        for b, t in enumerate(targets):
            boxes = t["boxes"].to(device, torch.float32).reshape(-1, 4)
            labels = t["labels"].to(device, torch.long).reshape(-1)
            if labels.numel() != boxes.shape[0]:
                raise ValueError(f"image {b}: {boxes.shape[0]} boxes but {labels.numel()} labels")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image {b}: labels must lie in 0..{self.num_classes - 1}")
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            rows.append((labels[valid], boxes[valid]))
        n = max((len(lab) for lab, _ in rows), default=0)
        gt_labels = torch.zeros((len(rows), n), dtype=torch.long, device=device)
        gt_boxes = torch.zeros((len(rows), n, 4), device=device)
        gt_mask = torch.zeros((len(rows), n), dtype=torch.bool, device=device)
        for b, (lab, box) in enumerate(rows):
            gt_labels[b, : len(lab)] = lab
            gt_boxes[b, : len(lab)] = box
            gt_mask[b, : len(lab)] = True
        return gt_labels, gt_boxes, gt_mask

    def uses_static_assigner(self) -> bool:
        """Whether this training step assigns with ATSS (the first epochs)."""
        if self.static_assigner_epoch == 0:
            return False
        if self.epoch is None:
            raise ConfigError(
                f"{type(self).__name__} trains with ATSS for its first static_assigner_epoch "
                f"({self.static_assigner_epoch}) epochs but was not told the epoch: train it "
                "with e2ekit's Trainer (which sets model.epoch each epoch), set .epoch "
                "yourself, or set model.static_assigner_epoch: 0"
            )
        return self.epoch < self.static_assigner_epoch

    def losses(self, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        logits, dists, points, strides, counts = self.predict_maps(images)
        logits, dists = logits.float(), dists.float()
        points, strides = points.float(), strides.float()
        gt_labels, gt_boxes, gt_mask = self._padded_targets(targets, images.device)
        pred_boxes = self.decode(dists, points, strides)  # (B, L, 4) pixels
        if self.uses_static_assigner():
            half = points.new_tensor(self.grid_cell_scale / 2) * strides  # (L, 1)
            anchors = torch.cat([points - half, points + half], dim=-1)  # (L, 4)
            labels, boxes, scores, positive = atss_assign(
                anchors,
                [int(c) for c in counts],
                gt_labels,
                gt_boxes,
                gt_mask,
                self.num_classes,
                self.atss_topk,
                pred_boxes.detach(),
            )
        else:
            labels, boxes, scores, positive = task_aligned_assign(
                logits.detach().sigmoid(),
                pred_boxes.detach(),
                points,
                gt_labels,
                gt_boxes,
                gt_mask,
                self.num_classes,
                self.tal_topk,
                self.tal_alpha,
                self.tal_beta,
            )
        one_hot = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].to(logits)
        score_sum = scores.sum().clamp(min=1.0)
        loss_cls = varifocal_loss(logits, scores, one_hot) / score_sum

        if positive.any():
            weight = scores.sum(-1)[positive]  # (P,)
            # boxes in strides, as the distributions are
            stride_pos = strides.expand(positive.shape[0], -1, -1)[positive]  # (P, 1)
            pred_pos = pred_boxes[positive] / stride_pos
            gt_pos = boxes[positive] / stride_pos
            loss_iou = generalized_box_iou_loss(pred_pos, gt_pos, reduction="none")
            loss_iou = (loss_iou * weight).sum() / score_sum
            point_pos = points.expand(positive.shape[0], -1, -1)[positive] / stride_pos
            target = torch.cat([point_pos - gt_pos[:, :2], gt_pos[:, 2:] - point_pos], dim=-1)
            target = target.clamp(0, self.reg_max - 0.01)  # (P, 4) in bins
            dist_pos = dists[positive].view(-1, 4, self.reg_max + 1)
            loss_dfl = (distribution_focal_loss(dist_pos, target) * weight).sum() / score_sum
        else:
            loss_iou = loss_dfl = dists.sum() * 0.0
        w = self.loss_weights
        return {
            "loss_cls": w["class"] * loss_cls,
            "loss_iou": w["iou"] * loss_iou,
            "loss_dfl": w["dfl"] * loss_dfl,
        }


def _create_ppyoloe(
    num_classes: int,
    width_mult: float,
    depth_mult: float,
    backbone: dict[str, Any] | None,
    neck_channels: Sequence[int] | None,
    **kwargs: Any,
) -> PPYOLOE:
    default = {"type": "cspresnet", "width_mult": width_mult, "depth_mult": depth_mult}
    net, indices = build_backbone(backbone, default, STRIDES)
    in_channels = [net.out_channels[i] for i in indices]
    channels = neck_channels or [max(round(c * width_mult), 1) for c in NECK_CHANNELS]
    depth = max(round(3 * depth_mult), 1)
    return PPYOLOE(num_classes, net, indices, in_channels, channels, depth, **kwargs)


def _builder(name: str, width_mult: float, depth_mult: float, max_det: int, doc: str) -> Any:
    def build(
        num_classes: int,
        backbone: dict[str, Any] | None = None,
        neck_channels: Sequence[int] | None = None,
        reg_max: int = 16,
        static_assigner_epoch: int = 4,
        atss_topk: int = 9,
        tal_topk: int = 13,
        tal_alpha: float = 1.0,
        tal_beta: float = 6.0,
        grid_cell_scale: float = 5.0,
        loss_weights: dict[str, float] | None = None,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.7,
        max_detections: int = max_det,
        pre_nms_topk: int = 1000,
        weighted_nms: bool = False,
    ) -> PPYOLOE:
        return _create_ppyoloe(
            num_classes,
            width_mult,
            depth_mult,
            backbone,
            neck_channels,
            reg_max=reg_max,
            static_assigner_epoch=static_assigner_epoch,
            atss_topk=atss_topk,
            tal_topk=tal_topk,
            tal_alpha=tal_alpha,
            tal_beta=tal_beta,
            grid_cell_scale=grid_cell_scale,
            loss_weights=loss_weights,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections=max_detections,
            pre_nms_topk=pre_nms_topk,
            weighted_nms=weighted_nms,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return MODELS.register(name)(build)


ppyoloe_s = _builder(
    "ppyoloe_s",
    0.50,
    0.33,
    300,
    "PP-YOLOE-s: CSPRepResNet and neck at width 0.50, depth 0.33 (7.9M parameters at 80 "
    "classes, as PaddleDetection's ppyoloe_crn_s).",
)
ppyoloe_m = _builder(
    "ppyoloe_m",
    0.75,
    0.67,
    300,
    "PP-YOLOE-m: width 0.75, depth 0.67 (23.4M parameters at 80 classes).",
)
ppyoloe_tiny = _builder(
    "ppyoloe_tiny",
    0.25,
    0.33,
    100,
    "A narrow PP-YOLOE (width 0.25, depth 0.33) for tests and CPU runs on 160-320 px "
    "images; not a PaddleDetection size.",
)
