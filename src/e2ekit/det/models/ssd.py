"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016) and SSDLite.

* ``ssd_vgg16``: SSD300 with the VGG-16 feature extractor (conv4_3 with L2 norm, atrous
  fc6/fc7, conv8_2..conv11_2), torchvision's ``ssd300_vgg16`` layout and default boxes.
* ``ssdlite_mobilenet_v3``: SSDLite320 MobileNetV3-Large (torchvision's
  ``ssdlite320_mobilenet_v3_large``): C4 expansion + C5 + 4 depthwise extra blocks, depthwise
  prediction heads, 6 default-box levels.
* ``ssd_tiny``: a narrow BasicBlock ResNet (strides 8/16/32) + 1 extra block, plain SSD head;
  for tests and quick CPU runs.

Built from torchvision's pieces (``SSDFeatureExtractorVGG`` via ``_vgg_extractor``,
``SSDLiteFeatureExtractorMobileNet`` via ``_mobilenet_extractor``, ``SSDHead``,
``SSDLiteHead``, ``DefaultBoxGenerator``, ``SSDMatcher``, ``BoxCoder(10, 10, 5, 5)``), and
the loss is torchvision's ``SSD.compute_loss`` itself (smooth-L1 on the positives + softmax
cross-entropy with hard negative mining at 3 negatives per positive, both divided by the
number of positives), returned as ``{"loss_cls", "loss_box"}``. torchvision's ``SSD``
wrapper is not used because its ``GeneralizedRCNNTransform`` resizes and normalizes; our
images arrive resized, normalized and padded by the data pipeline, so the models follow the
det :class:`~e2ekit.det.models.base.Detector` contract on that tensor: default boxes are laid
over the input as given, boxes stay in input pixels, and ``forward_raw`` (everything but NMS)
exports to ONNX with dynamic batch, height and width (the default boxes' pixel scale is taken
from the traced input shape, see :meth:`SSD._default_boxes`).

Classes: the softmax head has ``num_classes + 1`` outputs with background at index 0; the
contract's labels ``0..num_classes-1`` are shifted by one for the loss, and ``forward_raw``
returns the foreground probabilities only (B, A, num_classes), so ``scores[..., k]`` is the
probability of label ``k``. ``postprocess`` takes the top-k per class (torchvision's SSD).

Input size: SSD300-VGG16 needs inputs of at least 268 px (its last two extra layers are
unpadded 3x3 convs; the default-box ``steps`` are the paper's, tuned for 300 px);
SSDLite320 and ``ssd_tiny`` accept any size from about 64 px (the default boxes are laid on
the actual feature-map grid). Pretrained weights for SSD300 from torchvision expect inputs in
0-255 scale minus the ImageNet mean (std 1/255); SSDLite's expect [-1, 1]: configure the data
pipeline's normalization accordingly when loading them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD as _TorchvisionSSD
from torchvision.models.detection.ssd import SSDHead, _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as make_vgg_layers
from torchvision.ops.misc import Conv2dNormActivation

from e2ekit.core.errors import ConfigError
from e2ekit.det.models.base import Detection, Detector, Target, clip_boxes, multiclass_nms
from e2ekit.det.models.retinanet import (
    NarrowResNet,
    decode_boxes,
    is_detector_checkpoint,
    load_weights,
    match_anchors,
    prepare_targets,
    resnet_c3_c5,
)
from e2ekit.det.registry import MODELS

__all__ = ["SSD", "TinySSDBackbone", "ssd_tiny", "ssd_vgg16", "ssdlite_mobilenet_v3"]


class SSD(Detector):
    """SSD on a multi-scale ``backbone`` (see the module docstring).

    Args:
        num_classes: foreground classes; labels are ``0..num_classes-1``.
        backbone: module mapping images to the feature maps the head reads (ordered dict
            or list).
        anchor_generator: torchvision ``DefaultBoxGenerator`` (one entry per map).
        head: returns ``{"bbox_regression" (B, A, 4), "cls_logits" (B, A, C + 1)}``, e.g.
            ``SSDHead`` / ``SSDLiteHead`` built for ``num_classes + 1`` classes.
        strides: nominal stride of each map (informative).
        iou_thresh: anchors with at least this IoU with a box are positive (plus each box's
            best anchor, ``SSDMatcher``).
        neg_to_pos_ratio: hard negatives kept per positive in the classification loss.
        topk_candidates: candidates kept per class before NMS (torchvision's SSD rule).
        score_thresh, nms_thresh, max_detections, weighted_nms: see :class:`Detector`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        anchor_generator: DefaultBoxGenerator,
        head: nn.Module,
        strides: Sequence[int] = (),
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        max_detections: int = 200,
        topk_candidates: int = 400,
        weighted_nms: bool = False,
    ) -> None:
        super().__init__(
            num_classes, score_thresh, nms_thresh, max_detections, topk_candidates, weighted_nms
        )
        if neg_to_pos_ratio <= 0:
            raise ConfigError(f"neg_to_pos_ratio must be > 0, got {neg_to_pos_ratio}")
        self.strides = tuple(int(s) for s in strides)
        self.neg_to_pos_ratio = float(neg_to_pos_ratio)  # read by torchvision's compute_loss
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.proposal_matcher = det_utils.SSDMatcher(iou_thresh)

    @property
    def topk_candidates(self) -> int:
        """torchvision's name for :attr:`Detector.pre_nms_topk`."""
        return self.pre_nms_topk

    @topk_candidates.setter
    def topk_candidates(self, value: int) -> None:
        self.pre_nms_topk = int(value)

    def _run(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        feats = self.backbone(images)
        feats = list(feats.values()) if isinstance(feats, Mapping) else list(feats)
        if len(feats) != len(self.anchor_generator.aspect_ratios):
            raise ConfigError(
                f"backbone returns {len(feats)} maps but the default-box generator has "
                f"{len(self.anchor_generator.aspect_ratios)} levels"
            )
        return self.head(feats), self._default_boxes(images, feats)

    def _default_boxes(self, images: Tensor, feats: list[Tensor]) -> Tensor:
        """``DefaultBoxGenerator.forward`` for one image size: (A, 4) xyxy pixels.

        Same maths as torchvision's, but the (cx, cy, w, h) -> pixel scale is built from the
        traced input shape rather than ``torch.tensor([W, H])``, which tracing would freeze
        to a constant: the exported graph then follows the input's height and width.
        """
        image_size = images.shape[-2:]
        grid_sizes = [f.shape[-2:] for f in feats]
        boxes = self.anchor_generator._grid_default_boxes(
            grid_sizes, image_size, dtype=feats[0].dtype
        ).to(images.device)
        w = torch.as_tensor(image_size[1], device=images.device)
        h = torch.as_tensor(image_size[0], device=images.device)
        x_y_size = torch.stack([w, h]).to(boxes.dtype)
        return torch.cat(
            [
                (boxes[:, :2] - 0.5 * boxes[:, 2:]) * x_y_size,
                (boxes[:, :2] + 0.5 * boxes[:, 2:]) * x_y_size,
            ],
            -1,
        )

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes (B, A, 4) xyxy input pixels, foreground probabilities (B, A, C)."""
        head_outputs, anchors = self._run(images)
        boxes = decode_boxes(self.box_coder, head_outputs["bbox_regression"], anchors)
        scores = F.softmax(head_outputs["cls_logits"], dim=-1)[..., 1:]
        return clip_boxes(boxes, images), scores

    def postprocess(self, boxes: Tensor, scores: Tensor) -> list[Detection]:
        """torchvision's SSD rule: the ``topk_candidates`` best boxes *per class* enter NMS.

        Scores outside each class's top-k are zeroed, then the shared
        :func:`~e2ekit.det.models.base.multiclass_nms` runs with no global cut.
        """
        out = []
        for b, s in zip(boxes, scores, strict=True):
            k = min(self.pre_nms_topk, s.shape[0])
            kth = s.topk(k, dim=0).values[-1]  # (C,) each class's k-th best score
            s = torch.where(s >= kth, s, torch.zeros_like(s))
            out.append(
                multiclass_nms(
                    b,
                    s,
                    self.score_thresh,
                    self.nms_thresh,
                    self.max_detections,
                    s.numel(),
                    self.weighted_nms,
                )
            )
        return out

    def losses(self, images: Tensor, targets: Sequence[Target]) -> dict[str, Tensor]:
        head_outputs, anchors = self._run(images)
        tgts = prepare_targets(targets, images.device)
        for t in tgts:
            t["labels"] = t["labels"] + 1  # background is class 0 of the softmax
        matched = match_anchors(self.proposal_matcher, tgts, anchors)
        # torchvision's SSD loss verbatim; it reads self.box_coder and self.neg_to_pos_ratio.
        losses = _TorchvisionSSD.compute_loss(
            self,  # type: ignore[arg-type]
            tgts,
            head_outputs,
            [anchors] * len(tgts),
            matched,
        )
        return {"loss_cls": losses["classification"], "loss_box": losses["bbox_regression"]}


# --------------------------------------------------------------------------- builders


def _split_pretrained(pretrained: str | None) -> tuple[str | None, str | None]:
    """(backbone checkpoint, detector checkpoint): at most one is set."""
    if not pretrained:
        return None, None
    if is_detector_checkpoint(pretrained):
        return None, pretrained
    return pretrained, None


def _finish(
    num_classes: int,
    backbone: nn.Module,
    anchor_generator: DefaultBoxGenerator,
    head: nn.Module,
    detector_ckpt: str | None,
    **kwargs: Any,
) -> SSD:
    model = SSD(num_classes, backbone, anchor_generator, head, **kwargs)
    if detector_ckpt:
        load_weights(model, detector_ckpt)
    return model


class _VGG16Features(nn.Module):
    """torchvision VGG-16 without its 120M-parameter classifier (never used by SSD).

    Same ``features.*`` names and init as ``vgg16(weights=None)``, so an ImageNet VGG-16
    state dict loads into it (``classifier.*`` unexpected).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = make_vgg_layers(vgg_cfgs["D"], batch_norm=False)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)


@MODELS.register("ssd_vgg16")
def ssd_vgg16(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    scales: Sequence[float] = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    steps: Sequence[int] | None = (8, 16, 32, 64, 100, 300),
    iou_thresh: float = 0.5,
    neg_to_pos_ratio: float = 3.0,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    max_detections: int = 200,
    topk_candidates: int = 400,
    weighted_nms: bool = False,
) -> SSD:
    """SSD300 VGG-16 (torchvision ``ssd300_vgg16``); inputs of at least 268 px, 300 intended.

    ``pretrained``: local detector checkpoint, or an ImageNet VGG-16 state dict (torchvision
    names; loaded before VGG is cut into SSD stages, and ``trainable_layers`` then defaults
    to 4 of the 5 VGG stages, as in torchvision).
    """
    backbone_ckpt, detector_ckpt = _split_pretrained(pretrained)
    vgg = _VGG16Features()
    if backbone_ckpt:
        load_weights(vgg, backbone_ckpt)
    if trainable_layers is None:
        trainable_layers = 4 if backbone_ckpt else 5
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    backbone = _vgg_extractor(vgg, False, trainable_layers)  # type: ignore[arg-type]
    anchor_generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=list(scales),
        steps=list(steps) if steps is not None else None,
    )
    head = SSDHead(
        [512, 1024, 512, 256, 256, 256],
        anchor_generator.num_anchors_per_location(),
        num_classes + 1,
    )
    return _finish(
        num_classes,
        backbone,
        anchor_generator,
        head,
        detector_ckpt,
        strides=(8, 16, 32, 64, 100, 300),
        iou_thresh=iou_thresh,
        neg_to_pos_ratio=neg_to_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        topk_candidates=topk_candidates,
        weighted_nms=weighted_nms,
    )


@MODELS.register("ssdlite_mobilenet_v3")
def ssdlite_mobilenet_v3(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    reduced_tail: bool | None = None,
    width_mult: float = 1.0,
    min_ratio: float = 0.2,
    max_ratio: float = 0.95,
    iou_thresh: float = 0.5,
    neg_to_pos_ratio: float = 3.0,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.55,
    max_detections: int = 300,
    topk_candidates: int = 300,
    weighted_nms: bool = False,
) -> SSD:
    """SSDLite320 MobileNetV3-Large (torchvision ``ssdlite320_mobilenet_v3_large``).

    As in torchvision, MobileNetV3's tail is halved (``reduced_tail``) unless an ImageNet
    backbone checkpoint is given (its tail is full width), BN uses eps 1e-3 / momentum 0.03,
    and an un-pretrained backbone gets N(0, 0.03) conv init. ``pretrained``: local detector
    checkpoint or ImageNet MobileNetV3-Large state dict.
    """
    backbone_ckpt, detector_ckpt = _split_pretrained(pretrained)
    if reduced_tail is None:
        reduced_tail = backbone_ckpt is None
    if trainable_layers is None:
        trainable_layers = 6
    if not 0 <= trainable_layers <= 6:
        raise ConfigError(f"trainable_layers must be in 0..6, got {trainable_layers}")
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    mnet = tvm.mobilenet_v3_large(
        weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail, width_mult=width_mult
    )
    if backbone_ckpt:
        load_weights(mnet, backbone_ckpt)
    else:
        _normal_init(mnet)
    backbone = _mobilenet_extractor(mnet, trainable_layers, norm_layer)
    anchor_generator = DefaultBoxGenerator(
        [[2, 3] for _ in range(6)], min_ratio=min_ratio, max_ratio=max_ratio
    )
    out_channels = det_utils.retrieve_out_channels(backbone, (320, 320))
    head = SSDLiteHead(
        out_channels, anchor_generator.num_anchors_per_location(), num_classes + 1, norm_layer
    )
    return _finish(
        num_classes,
        backbone,
        anchor_generator,
        head,
        detector_ckpt,
        strides=(16, 32, 64, 128, 256, 512),
        iou_thresh=iou_thresh,
        neg_to_pos_ratio=neg_to_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        topk_candidates=topk_candidates,
        weighted_nms=weighted_nms,
    )


class TinySSDBackbone(nn.Module):
    """Narrow ResNet C3-C5 (strides 8/16/32) + stride-2 extra blocks (1x1 then 3x3 s2)."""

    def __init__(
        self, widths: Sequence[int] = (16, 32, 64, 128), extra_channels: Sequence[int] = (128,)
    ) -> None:
        super().__init__()
        net = NarrowResNet(widths)
        self.body = resnet_c3_c5(net)
        extra, c_in = [], net.widths[-1]
        for c_out in extra_channels:
            extra.append(
                nn.Sequential(
                    Conv2dNormActivation(c_in, max(1, c_out // 2), kernel_size=1),
                    Conv2dNormActivation(max(1, c_out // 2), c_out, kernel_size=3, stride=2),
                )
            )
            c_in = c_out
        self.extra = nn.ModuleList(extra)
        self.out_channels = [*net.widths[1:], *(int(c) for c in extra_channels)]
        self.strides = [8 * 2**i for i in range(len(self.out_channels))]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = list(self.body(x).values())
        y = feats[-1]
        for block in self.extra:
            y = block(y)
            feats.append(y)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


@MODELS.register("ssd_tiny")
def ssd_tiny(
    num_classes: int,
    pretrained: str | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    extra_channels: Sequence[int] = (128,),
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    min_ratio: float = 0.1,
    max_ratio: float = 0.8,
    iou_thresh: float = 0.5,
    neg_to_pos_ratio: float = 3.0,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
    topk_candidates: int = 200,
    weighted_nms: bool = False,
) -> SSD:
    """A small SSD for tests and quick CPU runs on 128-320 px inputs.

    Narrow BasicBlock ResNet C3-C5 + ``extra_channels`` stride-2 blocks (4 maps, strides
    8-64 by default), plain 3x3 SSD head. Default boxes span ``min_ratio``..``max_ratio``
    of the image side (SSD's linear scale rule) on the actual feature grids, so any input
    size works; ``aspect_ratios`` per level (default ``[2]``: 4 boxes per location).
    """
    backbone = TinySSDBackbone(widths, extra_channels)
    levels = len(backbone.out_channels)
    ratios = [list(r) for r in aspect_ratios] if aspect_ratios else [[2] for _ in range(levels)]
    if len(ratios) != levels:
        raise ConfigError(f"ssd_tiny has {levels} maps but {len(ratios)} aspect_ratios lists")
    anchor_generator = DefaultBoxGenerator(ratios, min_ratio=min_ratio, max_ratio=max_ratio)
    head = SSDHead(
        backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes + 1
    )
    return _finish(
        num_classes,
        backbone,
        anchor_generator,
        head,
        pretrained,
        strides=backbone.strides,
        iou_thresh=iou_thresh,
        neg_to_pos_ratio=neg_to_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        max_detections=max_detections,
        topk_candidates=topk_candidates,
        weighted_nms=weighted_nms,
    )
