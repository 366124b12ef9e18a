"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

ResNet + FPN (P3-P7), a shared 4-conv classification / regression head over every level,
9 anchors per location (3 octave scales x 3 aspect ratios), sigmoid focal loss (alpha 0.25,
gamma 2) and an L1 (or smooth-L1 / GIoU...) box loss on the foreground anchors.

Everything is torchvision's own code, wired to the det :class:`Detector` contract:
``FeaturePyramidNetwork`` with ``LastLevelP6P7`` on ``IntermediateLayerGetter`` (the
``retinanet_resnet50_fpn`` v1 layout and module names, so a torchvision COCO checkpoint lines
up), ``RetinaNetHead`` with its ``compute_loss``, ``AnchorGenerator``, ``det_utils.Matcher``
(IoU 0.5 / 0.4, low-quality matches allowed) and ``BoxCoder``. Only torchvision's
``RetinaNet`` wrapper is not used: its ``GeneralizedRCNNTransform`` resizes and normalizes,
whereas our images arrive already resized, normalized and padded by the data pipeline and the
exported graph must take that raw tensor. ``forward_raw`` therefore calls backbone, head,
anchor generator and box coder directly; boxes stay in input pixels (nothing to undo).

* training: ``{"loss_cls", "loss_box"}`` (torchvision's focal / box losses, each divided
  by the number of foreground anchors of the image, averaged over the batch);
* ``forward_raw``: boxes (B, A, 4) xyxy input pixels, sigmoid scores (B, A, C); traceable
  with dynamic batch, height and width (the anchor grid follows the traced feature shapes);
* ``postprocess``: the shared :func:`~e2ekit.det.models.base.multiclass_nms`; unlike
  torchvision, the ``topk_candidates`` pre-NMS cut is over all levels at once, not per level.

Labels are ``0..num_classes-1``; with sigmoid classification there is no background class.

Weights (``pretrained``) are only read from a local file: either a whole detector (keys
``backbone.*`` / ``head.*``, e.g. torchvision's ``retinanet_resnet50_fpn_coco``; tensors whose
shape differs, such as another class count's classifier, are skipped) or an ImageNet ResNet
(torchvision's ``resnet50-*.pth`` names), loaded before the FPN is attached. As in torchvision,
pretrained weights switch the ResNet to frozen BN and freeze conv1 + layer1 by default.
Any registered backbone with stride-8/16/32 maps can replace the ResNet (``backbone: {type:
darknet53}``); its own weights then go in that spec's ``pretrained``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Detector, Target, build_backbone, clip_boxes
from e2ekit.det.models.resnet_fpn import (
    FPNBackbone,
    NarrowResNet,
    freeze_resnet_layers,
    is_detector_checkpoint,
    load_weights,
    resnet_c3_c5,
    stage_channels,
)
from e2ekit.det.registry import MODELS

__all__ = [
    "FPNBackbone",
    "NarrowResNet",
    "RetinaNet",
    "decode_boxes",
    "is_detector_checkpoint",
    "load_weights",
    "retinanet_r18_fpn",
    "retinanet_r50_fpn",
    "retinanet_tiny",
]

BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")
FPN_STRIDES = (8, 16, 32)  # C3, C4, C5


# --------------------------------------------------------------------------- shared helpers


def decode_boxes(box_coder: det_utils.BoxCoder, rel_codes: Tensor, anchors: Tensor) -> Tensor:
    """``BoxCoder.decode_single`` for a batch: (B, A, 4) codes, (A, 4) anchors -> (B, A, 4).

    The batch is folded into the column axis (``decode_single`` decodes ``4k`` columns per
    anchor), so the maths is torchvision's to the bit and the batch stays dynamic in ONNX.
    """
    batch, num_anchors = rel_codes.shape[0], rel_codes.shape[1]
    codes = rel_codes.permute(1, 0, 2).reshape(num_anchors, -1)  # (A, 4B)
    boxes = box_coder.decode_single(codes, anchors)  # (A, 4B)
    return boxes.reshape(num_anchors, batch, 4).permute(1, 0, 2)


def prepare_targets(targets: Sequence[Target], device: torch.device) -> list[Target]:
    """Targets on ``device`` with float32 boxes / int64 labels, degenerate boxes dropped
    (torchvision asserts on them; augmentation can legitimately produce them).
    """
    out = []
    for t in targets:
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append({"boxes": boxes[ok], "labels": labels[ok]})
    return out


def match_anchors(matcher: Any, targets: Sequence[Target], anchors: Tensor) -> list[Tensor]:
    """Per image, the matched GT index of every anchor (-1 background, -2 ignored)."""
    matched = []
    for t in targets:
        if t["boxes"].numel() == 0:
            matched.append(
                torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
            )
        else:
            matched.append(matcher(box_ops.box_iou(t["boxes"], anchors)))
    return matched


def octave_anchor_sizes(
    anchor_sizes: Sequence[float | Sequence[float]], scales_per_octave: int = 3
) -> tuple[tuple[int, ...], ...]:
    """Per level: a number ``s`` becomes ``int(s * 2**(i / n))`` for i < n (torchvision's
    RetinaNet rule); a sequence is taken as the level's explicit sizes.
    """
    out = []
    for size in anchor_sizes:
        if isinstance(size, (int, float)):
            n = scales_per_octave
            out.append(tuple(int(size * 2 ** (i / n)) for i in range(n)))
        else:
            out.append(tuple(int(s) for s in size))
    return tuple(out)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


# --------------------------------------------------------------------------- the model


class RetinaNet(Detector):
    """RetinaNet on a feature-pyramid ``backbone`` (see the module docstring).

    Args:
        num_classes: foreground classes; labels are ``0..num_classes-1``.
        backbone: maps images to an ordered dict of same-width levels and has an
            ``out_channels`` int (e.g. :class:`FPNBackbone`).
        strides: stride of each level (informative: anchors follow the feature shapes).
        anchor_sizes: per level, a base size in input pixels (expanded to
            ``scales_per_octave`` octave scales) or an explicit tuple of sizes.
        aspect_ratios: anchor height/width ratios, shared by all levels.
        fg_iou_thresh, bg_iou_thresh: anchor IoU for foreground / background (between:
            ignored); every GT also keeps its best anchors (low-quality matches).
        box_loss: ``l1`` (torchvision), ``smooth_l1``, ``giou``, ``diou`` or ``ciou``.
        head_norm: ``None`` (torchvision v1 head) or ``"gn"`` (GroupNorm, as the v2 head).
        head_convs: 3x3 convs per head tower (4 in the paper).
        topk_candidates: best (anchor, class) pairs entering NMS (``Detector.pre_nms_topk``).
        score_thresh, nms_thresh, max_detections, weighted_nms: see :class:`Detector`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        strides: Sequence[int],
        anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales_per_octave: int = 3,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        box_loss: str = "l1",
        head_norm: str | None = None,
        head_convs: int = 4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
        topk_candidates: int = 1000,
        weighted_nms: bool = False,
    ) -> None:
        super().__init__(
            num_classes, score_thresh, nms_thresh, max_detections, topk_candidates, weighted_nms
        )
        if box_loss not in BOX_LOSSES:
            raise ConfigError(f"box_loss must be one of {BOX_LOSSES}, got '{box_loss}'")
        if head_norm not in (None, "gn"):
            raise ConfigError(f"head_norm must be null or 'gn', got '{head_norm}'")
        if not 1 <= head_convs <= 4:
            raise ConfigError(f"head_convs must be in 1..4, got {head_convs}")
        if len(anchor_sizes) != len(strides):
            raise ConfigError(
                f"{len(strides)} pyramid levels (strides {list(strides)}) but "
                f"{len(anchor_sizes)} anchor_sizes"
            )
        self.strides = tuple(int(s) for s in strides)
        self.backbone = backbone
        sizes = octave_anchor_sizes(anchor_sizes, scales_per_octave)
        ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
        self.anchor_generator = AnchorGenerator(sizes, ratios)
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ConfigError(f"every level needs the same anchor count, got {num_anchors}")
        norm = _group_norm if head_norm == "gn" else None
        self.head = RetinaNetHead(backbone.out_channels, num_anchors[0], num_classes, norm)
        if head_convs < 4:
            for tower in (self.head.classification_head, self.head.regression_head):
                tower.conv = tower.conv[:head_convs]
        self.head.regression_head._loss_type = box_loss
        self.proposal_matcher = det_utils.Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True
        )
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    @property
    def topk_candidates(self) -> int:
        """torchvision's name for :attr:`Detector.pre_nms_topk`."""
        return self.pre_nms_topk

    @topk_candidates.setter
    def topk_candidates(self, value: int) -> None:
        self.pre_nms_topk = int(value)

    def _run(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Head outputs (``cls_logits`` (B, A, C), ``bbox_regression`` (B, A, 4)), anchors
        (A, 4) xyxy pixels (the same for every image of the batch).
        """
        feats = list(self.backbone(images).values())
        if len(feats) != len(self.strides):
            raise ConfigError(f"backbone returned {len(feats)} levels, expected {self.strides}")
        head_outputs = self.head(feats)
        image_list = ImageList(images, [(images.shape[-2], images.shape[-1])])
        return head_outputs, self.anchor_generator(image_list, feats)[0]

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        head_outputs, anchors = self._run(images)
        boxes = decode_boxes(self.box_coder, head_outputs["bbox_regression"], anchors)
        return clip_boxes(boxes, images), torch.sigmoid(head_outputs["cls_logits"])

    def losses(self, images: Tensor, targets: Sequence[Target]) -> dict[str, Tensor]:
        head_outputs, anchors = self._run(images)
        tgts = prepare_targets(targets, images.device)
        matched = match_anchors(self.proposal_matcher, tgts, anchors)
        losses = self.head.compute_loss(tgts, head_outputs, [anchors] * len(tgts), matched)
        return {"loss_cls": losses["classification"], "loss_box": losses["bbox_regression"]}


# --------------------------------------------------------------------------- builders


def _retinanet(
    num_classes: int,
    factory: Any,
    backbone: dict[str, Any] | None,
    pretrained: str | None,
    trainable_layers: int | None,
    frozen_bn: bool | None,
    fpn_channels: int,
    extra_levels: bool,
    kwargs: dict[str, Any],
) -> RetinaNet:
    """A torchvision ResNet (``factory``) or a registered ``backbone`` spec + FPN + head."""
    detector_ckpt = bool(pretrained) and is_detector_checkpoint(pretrained)  # type: ignore[arg-type]
    if backbone is not None:
        if pretrained and not detector_ckpt:
            raise ConfigError(
                "with a 'backbone' spec, 'pretrained' must be a whole-detector checkpoint; "
                "put backbone weights in the spec's own 'pretrained'"
            )
        net, indices = build_backbone(backbone, {}, FPN_STRIDES)
        in_channels = [net.out_channels[i] for i in indices]
        body: nn.Module = net
    else:
        if frozen_bn is None:  # torchvision: frozen BN under pretrained weights, else BN
            frozen_bn = bool(pretrained)
        net = factory(norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
        if pretrained and not detector_ckpt:
            load_weights(net, pretrained)
        if trainable_layers is None:
            trainable_layers = 3 if pretrained else 5
        freeze_resnet_layers(net, trainable_layers)
        body, indices = resnet_c3_c5(net), [0, 1, 2]
        in_channels = [stage_channels(getattr(net, f"layer{i}")) for i in (2, 3, 4)]
    strides = FPN_STRIDES + ((64, 128) if extra_levels else ())
    fpn = FPNBackbone(body, indices, in_channels, fpn_channels, extra_levels)
    model = RetinaNet(num_classes, fpn, strides, **kwargs)
    if pretrained and detector_ckpt:
        load_weights(model, pretrained)
    return model


@MODELS.register("retinanet_r50_fpn")
def retinanet_r50_fpn(
    num_classes: int,
    pretrained: str | None = None,
    backbone: dict[str, Any] | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_loss: str = "l1",
    head_norm: str | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
    topk_candidates: int = 1000,
    weighted_nms: bool = False,
) -> RetinaNet:
    """RetinaNet ResNet-50 FPN P3-P7, torchvision's ``retinanet_resnet50_fpn`` (v1) layout.

    ``pretrained``: local detector checkpoint or ImageNet ResNet-50 state dict (which also
    switches to frozen BN and ``trainable_layers`` 3 unless given). ``backbone``: a
    registered backbone spec (stride 8/16/32 maps) instead of the ResNet-50.
    """
    return _retinanet(
        num_classes,
        lambda norm_layer: tvm.resnet50(weights=None, norm_layer=norm_layer),
        backbone,
        pretrained,
        trainable_layers,
        frozen_bn,
        fpn_channels,
        True,
        dict(
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            box_loss=box_loss,
            head_norm=head_norm,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections=max_detections,
            topk_candidates=topk_candidates,
            weighted_nms=weighted_nms,
        ),
    )


@MODELS.register("retinanet_r18_fpn")
def retinanet_r18_fpn(
    num_classes: int,
    pretrained: str | None = None,
    backbone: dict[str, Any] | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_loss: str = "l1",
    head_norm: str | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
    topk_candidates: int = 1000,
    weighted_nms: bool = False,
) -> RetinaNet:
    """RetinaNet ResNet-18 FPN P3-P7 (the R-50 layout on C3-C5 of 128/256/512 channels)."""
    return _retinanet(
        num_classes,
        lambda norm_layer: tvm.resnet18(weights=None, norm_layer=norm_layer),
        backbone,
        pretrained,
        trainable_layers,
        frozen_bn,
        fpn_channels,
        True,
        dict(
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            box_loss=box_loss,
            head_norm=head_norm,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections=max_detections,
            topk_candidates=topk_candidates,
            weighted_nms=weighted_nms,
        ),
    )


@MODELS.register("retinanet_tiny")
def retinanet_tiny(
    num_classes: int,
    pretrained: str | None = None,
    backbone: dict[str, Any] | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks: int = 1,
    fpn_channels: int = 64,
    anchor_sizes: Sequence[float | Sequence[float]] = (16, 32, 64),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    head_convs: int = 2,
    head_norm: str | None = "gn",
    box_loss: str = "l1",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
    topk_candidates: int = 1000,
    weighted_nms: bool = False,
) -> RetinaNet:
    """A small RetinaNet for tests and quick CPU runs on 128-320 px inputs.

    A narrow BasicBlock ResNet (``widths``, ``blocks`` per stage; or a registered
    ``backbone`` spec), FPN P3-P5 of ``fpn_channels``, a GroupNorm head of ``head_convs``
    convs per tower. Anchors are three octave scales of 16/32/64 px at strides 8/16/32
    (16-101 px), suited to objects of about 10-150 px; pass ``anchor_sizes`` for others.
    """
    kwargs = dict(
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios,
        head_convs=head_convs,
        box_loss=box_loss,
        head_norm=head_norm,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        topk_candidates=topk_candidates,
        weighted_nms=weighted_nms,
    )
    if backbone is not None:
        return _retinanet(
            num_classes, None, backbone, pretrained, None, None, fpn_channels, False, kwargs
        )
    net = NarrowResNet(widths, blocks)
    fpn = FPNBackbone(resnet_c3_c5(net), [0, 1, 2], net.widths[1:], fpn_channels, False)
    model = RetinaNet(num_classes, fpn, FPN_STRIDES, **kwargs)
    if pretrained:
        load_weights(model, pretrained)
    return model
