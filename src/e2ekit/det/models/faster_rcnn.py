"""Faster R-CNN with FPN (Ren et al., NeurIPS 2015; Lin et al., "Feature Pyramid Networks",
CVPR 2017): PaddleDetection's two-stage ``faster_rcnn_r50_fpn`` family.

A backbone + FPN (P2-P5 plus a max-pooled P6 "pool" level), a region proposal network
(objectness and box deltas per anchor, NMS per image and level) and a RoI head (RoIAlign on
P2-P5 by box size, two FC layers, a softmax classifier with a background class and
class-specific box deltas). Every part is torchvision's own module, under torchvision's
names (``backbone.body`` / ``backbone.fpn`` / ``rpn`` / ``roi_heads``) so a torchvision COCO
checkpoint lines up: ``AnchorGenerator``, ``RPNHead``, ``RegionProposalNetwork``,
``MultiScaleRoIAlign``, ``TwoMLPHead``, ``FastRCNNPredictor`` and ``RoIHeads`` (its
sampling, matching and ``fastrcnn_loss``). Only torchvision's ``FasterRCNN`` wrapper is not
used: its ``GeneralizedRCNNTransform`` resizes and normalises, whereas our images arrive
resized, normalised and padded by the data pipeline; the RPN and RoI heads are called
directly on an ``ImageList`` of the batch, so boxes stay in input pixels.

* training: ``{"loss_rpn_cls", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box"}``;
* ``forward_raw``: the second stage's class-specific boxes for every proposal, one row per
  (proposal, class) with that class's softmax score (others 0): boxes (B, P*C, 4), scores
  (B, P*C, C). :meth:`Detector.postprocess` (class-wise NMS, ``max_detections``) on them is
  exactly torchvision's ``postprocess_detections``, and the ONNX export with NMS in the graph
  works on it too.

NMS already runs inside the RPN, so ``forward_raw`` is not "everything but NMS" and its
proposal count varies per image: exporting raw outputs (``export.nms: false``) is refused,
see :attr:`FasterRCNN.raw_export_refused`.

Labels are ``0..num_classes-1``; torchvision's heads keep 0 for background, so targets are
shifted up by one on the way in and scores drop that column on the way out.

Weights (``pretrained``) are only read from a local file: a whole detector (keys
``backbone.*`` / ``rpn.*`` / ``roi_heads.*``, e.g. torchvision's
``fasterrcnn_resnet50_fpn_coco``; the class-count-dependent predictor may differ in shape,
nothing else may) or an ImageNet backbone (torchvision's ``resnet50-*.pth`` /
``mobilenet_v3_large-*.pth`` names, or timm's files), loaded before the FPN is attached;
``pretrained: imagenet`` reads the one ``e2ekit weights import`` cached. As in torchvision,
pretrained weights switch to frozen BN and freeze the early stages by default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.weights import is_weights_name, load_backbone_weights
from e2ekit.det.models.base import Detector, Target
from e2ekit.det.models.resnet_fpn import (
    FPNBackbone,
    NarrowResNet,
    freeze_resnet_layers,
    is_detector_checkpoint,
    load_weights,
    resnet_c2_c5,
    stage_channels,
)
from e2ekit.det.models.retinanet import octave_anchor_sizes, prepare_targets
from e2ekit.det.models.roi_pool import GatherRoIAlign
from e2ekit.det.registry import MODELS

__all__ = [
    "FasterRCNN",
    "faster_rcnn_mobilenet_v3_fpn",
    "faster_rcnn_r50_fpn",
    "faster_rcnn_tiny",
    "load_detector_weights",
]

# keys of a whole Faster R-CNN checkpoint (a bare backbone has none of them)
DETECTOR_KEYS = ("rpn.", "roi_heads.")
# the only tensors a detector checkpoint may lack or have in another shape: the classifier
# and box deltas depend on the class count
CLASS_DEPENDENT = "roi_heads.box_predictor."
RESNET_STRIDES = (4, 8, 16, 32, 64)  # P2-P5 + pool
RESNET_ROI_LEVELS = ("0", "1", "2", "3")  # RoIAlign on P2-P5, not on "pool"
# torchvision's mobilenet_v3_large FPN: the last strided block and the last layer (both at
# stride 32), plus the pooled level
MOBILENET_STRIDES = (32, 32, 64)
MOBILENET_ROI_LEVELS = ("0", "1")


class FasterRCNN(Detector):
    """Faster R-CNN on a feature-pyramid ``backbone`` (see the module docstring).

    Args:
        num_classes: foreground classes; labels are ``0..num_classes-1``.
        backbone: maps images to an ordered dict of same-width levels (names ``"0"``,
            ``"1"``, ... and ``"pool"``) and has an ``out_channels`` int.
        strides: stride of each level (informative: anchors follow the feature shapes).
        roi_levels: names of the levels RoIAlign pools from (each box from one level,
            chosen by its size).
        anchor_sizes: per level, one size in input pixels or a list of sizes.
        aspect_ratios: anchor height/width ratios, shared by all levels.
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: best anchors per level entering
            the RPN's NMS (training / eval).
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals per image kept after it.
        rpn_nms_thresh: IoU of the RPN's NMS.
        rpn_score_thresh: proposals with objectness probability at most this are dropped.
        rpn_batch_size_per_image, rpn_positive_fraction: anchors sampled per image for the
            RPN losses, and the largest foreground share of them.
        roi_batch_size_per_image, roi_positive_fraction: proposals sampled per image for the
            second-stage losses, and the largest foreground share of them.
        roi_output_size, roi_sampling_ratio: RoIAlign output side and sampling points per bin.
        representation_size: width of the two FC layers of the box head.
        score_thresh, nms_thresh, max_detections: second-stage post-processing, see
            :class:`Detector`.
    """

    #: Why ``export.nms: false`` (raw boxes and scores, dynamic batch) cannot be exported.
    raw_export_refused: ClassVar[str | None] = (
        "Faster R-CNN runs NMS inside its region proposal network, so its raw outputs are "
        "already filtered and their count varies per image; export it with export.nms: true"
    )

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        strides: Sequence[int],
        roi_levels: Sequence[str],
        anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_score_thresh: float = 0.0,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        roi_batch_size_per_image: int = 512,
        roi_positive_fraction: float = 0.25,
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
        representation_size: int = 1024,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        _check_ranges(locals())
        # every (proposal, class) pair may enter NMS, as in torchvision: no pre-NMS cut
        super().__init__(
            num_classes,
            score_thresh,
            nms_thresh,
            max_detections,
            pre_nms_topk=rpn_post_nms_top_n_test * num_classes,
        )
        if len(anchor_sizes) != len(strides):
            raise ConfigError(
                f"{len(strides)} pyramid levels (strides {list(strides)}) but "
                f"{len(anchor_sizes)} anchor_sizes"
            )
        self.strides = tuple(int(s) for s in strides)
        self.representation_size = int(representation_size)
        self.backbone = backbone
        sizes = octave_anchor_sizes(anchor_sizes, scales_per_octave=1)
        ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
        anchor_generator = AnchorGenerator(sizes, ratios)
        num_anchors = anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ConfigError(f"every level needs the same anchor count, got {num_anchors}")
        channels = int(backbone.out_channels)
        self.rpn = RegionProposalNetwork(
            anchor_generator,
            RPNHead(channels, num_anchors[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={
                "training": rpn_post_nms_top_n_train,
                "testing": rpn_post_nms_top_n_test,
            },
            nms_thresh=rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
        )
        pooler = GatherRoIAlign(list(roi_levels), roi_output_size, roi_sampling_ratio)
        self.roi_heads = self._make_roi_heads(
            pooler,
            channels * roi_output_size**2,
            {
                "batch_size_per_image": roi_batch_size_per_image,
                "positive_fraction": roi_positive_fraction,
                "score_thresh": score_thresh,
                "nms_thresh": nms_thresh,
                "detections_per_img": max_detections,
            },
        )

    def _make_roi_heads(
        self, pooler: MultiScaleRoIAlign, in_features: int, settings: dict[str, Any]
    ) -> nn.Module:
        """The second stage on the pooled RoIs (``in_features`` each); ``settings`` are
        :class:`RoIHeads`' sampling and post-processing arguments. Subclasses with other
        second stages (Cascade R-CNN) override this.
        """
        size = self.representation_size
        return RoIHeads(
            pooler,
            TwoMLPHead(in_features, size),
            FastRCNNPredictor(size, self.num_classes + 1),  # + background
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            bbox_reg_weights=None,  # torchvision's (10, 10, 5, 5)
            **settings,
        )

    def _image_list(self, images: Tensor) -> ImageList:
        """The batch as torchvision's ``ImageList``: every image is the whole padded tensor."""
        height, width = images.shape[-2:]
        return ImageList(images, [(int(height), int(width))] * images.shape[0])

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.raw_from_features(images, self.backbone(images))

    def raw_from_features(self, images: Tensor, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """:meth:`forward_raw` on backbone features already computed (a mask branch pools
        from the same ones)."""
        image_list = self._image_list(images)
        proposals, _ = self.rpn(image_list, feats)
        heads = self.roi_heads
        pooled = heads.box_roi_pool(feats, proposals, image_list.image_sizes)
        logits, deltas = heads.box_predictor(heads.box_head(pooled))
        boxes = heads.box_coder.decode(deltas, proposals)  # (sum P, C + 1, 4)
        boxes = box_ops.clip_boxes_to_image(boxes, image_list.image_sizes[0])[:, 1:]
        scores = F.softmax(logits, -1)[:, 1:]  # drop the background column
        wide = (boxes[..., 2] - boxes[..., 0] >= 1e-2) & (boxes[..., 3] - boxes[..., 1] >= 1e-2)
        scores = scores * wide  # torchvision drops boxes under 0.01 px before NMS
        return _per_image_rows(boxes, scores, [len(p) for p in proposals])

    def losses(self, images: Tensor, targets: Sequence[Target]) -> dict[str, Tensor]:
        tgts = self._torchvision_targets(targets, images.device)
        feats = self.backbone(images)
        image_list = self._image_list(images)
        proposals, rpn_losses = self.rpn(image_list, feats, tgts)
        _, roi_losses = self.roi_heads(feats, proposals, image_list.image_sizes, tgts)
        return {
            "loss_rpn_cls": rpn_losses["loss_objectness"],
            "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
            "loss_rcnn_cls": roi_losses["loss_classifier"],
            "loss_rcnn_box": roi_losses["loss_box_reg"],
        }

    def _torchvision_targets(self, targets: Sequence[Target], device: torch.device) -> list[Target]:
        """Degenerate boxes dropped, labels checked and shifted past the background class."""
        out = []
        for t in prepare_targets(targets, device):
            labels = t["labels"]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(
                    f"target labels must be in 0..{self.num_classes - 1} (the detector's "
                    f"classes), got {labels.min().item()}..{labels.max().item()}: check "
                    "data.num_classes against the annotations' categories"
                )
            out.append({"boxes": t["boxes"], "labels": labels + 1})
        return out


def _per_image_rows(boxes: Tensor, scores: Tensor, counts: list[int]) -> tuple[Tensor, Tensor]:
    """(sum P, C, 4) boxes and (sum P, C) scores -> (B, P*C, 4), (B, P*C, C): one row per
    (proposal, class), scored for that class only; images with fewer proposals are padded
    with zero-score rows, which no score threshold keeps.
    """
    num_classes = scores.shape[-1]
    eye = torch.eye(num_classes, dtype=scores.dtype, device=scores.device)
    if len(counts) == 1:  # no split: a traced graph keeps the proposal count dynamic
        rows = (scores[..., None] * eye).reshape(1, -1, num_classes)
        return boxes.reshape(1, -1, 4), rows
    rows_b = boxes.reshape(-1, num_classes, 4).split(counts)
    rows_s = scores.split(counts)
    width = max(counts) * num_classes
    out_b, out_s = [], []
    for b, s in zip(rows_b, rows_s, strict=True):
        b = b.reshape(-1, 4)
        s = (s[..., None] * eye).reshape(-1, num_classes)
        pad = width - b.shape[0]
        out_b.append(F.pad(b, (0, 0, 0, pad)) if pad else b)
        out_s.append(F.pad(s, (0, 0, 0, pad)) if pad else s)
    return torch.stack(out_b), torch.stack(out_s)


def _check_ranges(args: dict[str, Any]) -> None:
    """Reject settings torchvision would only trip over mid-training."""
    positive = (
        "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test",
        "rpn_batch_size_per_image",
        "roi_batch_size_per_image",
        "roi_output_size",
        "representation_size",
        "max_detections",
    )
    for key in positive:
        if int(args[key]) < 1:
            raise ConfigError(f"model.{key} must be >= 1, got {args[key]}")
    for key in ("rpn_positive_fraction", "roi_positive_fraction"):
        if not 0 < float(args[key]) <= 1:
            raise ConfigError(f"model.{key} must be in (0, 1], got {args[key]}")
    for key in ("rpn_nms_thresh", "nms_thresh", "rpn_score_thresh", "score_thresh"):
        if not 0 <= float(args[key]) <= 1:
            raise ConfigError(f"model.{key} must be in [0, 1], got {args[key]}")
    if int(args["roi_sampling_ratio"]) < 0:
        raise ConfigError(
            f"model.roi_sampling_ratio must be >= 0 (0: adaptive), got {args['roi_sampling_ratio']}"
        )


# --------------------------------------------------------------------------- weights


def load_detector_weights(
    model: nn.Module, path: str | Path, may_differ: tuple[str, ...] = (CLASS_DEPENDENT,)
) -> None:
    """Load a whole-detector checkpoint; only the tensors under ``may_differ`` (the
    class-dependent predictor) may be missing or differ in shape (another class count).
    Anything else missing means the file was saved from another architecture or other
    settings, which would silently train from scratch.
    """
    missing = load_weights(model, path)
    bad = [
        k for k in missing if not k.startswith(may_differ) and not k.endswith("num_batches_tracked")
    ]
    if bad:
        raise ConfigError(
            f"model.pretrained '{path}' does not fit {type(model).__name__}: {len(bad)} "
            f"tensors are missing or differ in shape (first: {bad[:3]}); it was saved from "
            "another model type or other widths (fpn_channels, widths, representation_size, "
            "anchor counts)"
        )


def _split_pretrained(pretrained: str | None) -> tuple[str | None, str | None]:
    """(detector checkpoint, backbone checkpoint): at most one is set."""
    if not pretrained:
        return None, None
    if is_weights_name(pretrained):  # imagenet / an architecture: a cached backbone file
        return None, pretrained
    if is_detector_checkpoint(pretrained, DETECTOR_KEYS):
        return pretrained, None
    return None, pretrained


def _load_backbone(net: nn.Module, path: str | None, arch: str | None = None) -> None:
    """ImageNet weights into the bare backbone net; refused below ``MIN_SHARE`` of its tensors
    (a file for another architecture), with the load report in the message."""
    if path:
        try:
            load_backbone_weights(net, path, arch=arch)
        except ConfigError as exc:
            raise ConfigError(
                f"model.pretrained: {exc}; expected a whole Faster R-CNN (rpn.* / roi_heads.* "
                f"keys) or an ImageNet {type(net).__name__} state dict"
            ) from exc


def _resnet_fpn(
    net: nn.Module, fpn_channels: int, trainable_layers: int
) -> tuple[FPNBackbone, tuple[int, ...], tuple[str, ...]]:
    """ResNet C2-C5 + FPN + max-pooled P6: torchvision's ``resnet_fpn_backbone`` layout."""
    freeze_resnet_layers(net, trainable_layers)
    in_channels = [stage_channels(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)]
    fpn = FPNBackbone(
        resnet_c2_c5(net), [0, 1, 2, 3], in_channels, fpn_channels, extra_block=LastLevelMaxPool()
    )
    return fpn, RESNET_STRIDES, RESNET_ROI_LEVELS


BackboneMaker = Callable[[type[nn.Module], int | None, str | None], Any]


def _build(
    num_classes: int,
    make_backbone: BackboneMaker,
    pretrained: str | None,
    trainable_layers: int | None,
    frozen_bn: bool | None,
    kwargs: dict[str, Any],
    make_model: Callable[..., FasterRCNN] = FasterRCNN,
    load: Callable[[nn.Module, str], None] = load_detector_weights,
) -> FasterRCNN:
    """Backbone (BN kind and frozen stages from the weights, as torchvision), heads, weights.

    ``make_backbone(norm_layer, trainable_layers, backbone_weights)`` returns the FPN
    backbone, its strides and the RoIAlign levels; ``make_model`` (a :class:`FasterRCNN`
    class) takes them and ``kwargs``; ``load`` reads a whole-detector checkpoint into it.
    """
    detector_ckpt, backbone_ckpt = _split_pretrained(pretrained)
    if frozen_bn is None:  # torchvision: frozen BN under pretrained weights, else BN
        frozen_bn = bool(pretrained)
    norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    backbone, strides, roi_levels = make_backbone(norm, trainable_layers, backbone_ckpt)
    model = make_model(num_classes, backbone, strides, roi_levels, **kwargs)
    if detector_ckpt:
        load(model, detector_ckpt)
    return model


def _trainable(trainable_layers: int | None, pretrained: str | None, full: int) -> int:
    """torchvision's default: 3 trainable stages under pretrained weights, else all."""
    if trainable_layers is None:
        return 3 if pretrained else full
    return int(trainable_layers)


def resnet50_fpn_maker(fpn_channels: int, pretrained: str | None) -> BackboneMaker:
    """The ``make_backbone`` of :func:`_build` for a ResNet-50 + FPN."""

    def make(norm: type[nn.Module], trainable: int | None, weights: str | None) -> Any:
        net = tvm.resnet50(weights=None, norm_layer=norm)
        _load_backbone(net, weights, "resnet50")
        return _resnet_fpn(net, fpn_channels, _trainable(trainable, pretrained, 5))

    return make


def narrow_resnet_fpn_maker(
    widths: Sequence[int], blocks: int, fpn_channels: int, pretrained: str | None
) -> BackboneMaker:
    """The ``make_backbone`` of :func:`_build` for a :class:`NarrowResNet` + FPN."""

    def make(norm: type[nn.Module], trainable: int | None, weights: str | None) -> Any:
        net = NarrowResNet(widths, blocks, norm_layer=norm)
        _load_backbone(net, weights)
        return _resnet_fpn(net, fpn_channels, _trainable(trainable, pretrained, 5))

    return make


# --------------------------------------------------------------------------- builders


@MODELS.register("faster_rcnn_r50_fpn")
def faster_rcnn_r50_fpn(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_score_thresh: float = 0.0,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    roi_batch_size_per_image: int = 512,
    roi_positive_fraction: float = 0.25,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    representation_size: int = 1024,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> FasterRCNN:
    """Faster R-CNN ResNet-50 FPN, torchvision's ``fasterrcnn_resnet50_fpn`` (v1) layout.

    ``pretrained``: a local detector checkpoint or ImageNet ResNet-50 state dict (which also
    switches to frozen BN and ``trainable_layers`` 3 unless given).
    """
    kwargs = _head_kwargs(locals())
    backbone = resnet50_fpn_maker(fpn_channels, pretrained)
    return _build(num_classes, backbone, pretrained, trainable_layers, frozen_bn, kwargs)


@MODELS.register("faster_rcnn_mobilenet_v3_fpn")
def faster_rcnn_mobilenet_v3_fpn(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    anchor_sizes: Sequence[float | Sequence[float]] = ((32, 64, 128, 256, 512),) * 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_score_thresh: float = 0.05,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    roi_batch_size_per_image: int = 512,
    roi_positive_fraction: float = 0.25,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    representation_size: int = 1024,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> FasterRCNN:
    """Faster R-CNN MobileNetV3-Large FPN, torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``:
    FPN (256 channels) on the last strided block and the last layer (both stride 32) plus
    a pooled level (stride 64), five
    anchor sizes on every level, RPN objectness threshold 0.05.

    ``pretrained``: a local detector checkpoint or ImageNet MobileNetV3-Large state dict;
    ``trainable_layers`` counts feature stages from the last one (0..6; 3 under pretrained
    weights, else 6).
    """
    kwargs = _head_kwargs(locals())

    def backbone(norm: type[nn.Module], trainable: int | None, weights: str | None) -> Any:
        net = tvm.mobilenet_v3_large(weights=None, norm_layer=norm)
        _load_backbone(net, weights, "mobilenet_v3_large")
        layers = _trainable(trainable, pretrained, 6)
        try:
            fpn = _mobilenet_extractor(net, True, layers)
        except ValueError as exc:  # torchvision names the valid range
            raise ConfigError(f"model.trainable_layers: {exc}") from exc
        return fpn, MOBILENET_STRIDES, MOBILENET_ROI_LEVELS

    return _build(num_classes, backbone, pretrained, trainable_layers, frozen_bn, kwargs)


@MODELS.register("faster_rcnn_tiny")
def faster_rcnn_tiny(
    num_classes: int,
    pretrained: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks: int = 1,
    fpn_channels: int = 64,
    anchor_sizes: Sequence[float | Sequence[float]] = (16, 32, 64, 128, 256),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 500,
    rpn_pre_nms_top_n_test: int = 500,
    rpn_post_nms_top_n_train: int = 200,
    rpn_post_nms_top_n_test: int = 100,
    rpn_nms_thresh: float = 0.7,
    rpn_score_thresh: float = 0.0,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    roi_batch_size_per_image: int = 64,
    roi_positive_fraction: float = 0.25,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 1,
    representation_size: int = 256,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> FasterRCNN:
    """A small Faster R-CNN for tests and quick CPU runs on 128-320 px inputs.

    A narrow BasicBlock ResNet (``widths``, ``blocks`` per stage), FPN P2-P5 + pool of
    ``fpn_channels``, anchors of 16-256 px (one size per level, strides 4-64) and a
    256-wide box head. Fewer proposals (200 in training) and sampled RoIs (64 per image),
    and one RoIAlign sample per bin: RoIAlign's backward dominates a CPU step otherwise.
    """
    kwargs = _head_kwargs(locals())
    backbone = narrow_resnet_fpn_maker(widths, blocks, fpn_channels, pretrained)
    return _build(num_classes, backbone, pretrained, trainable_layers, frozen_bn, kwargs)


_HEAD_KEYS = (
    "anchor_sizes",
    "aspect_ratios",
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_score_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "roi_batch_size_per_image",
    "roi_positive_fraction",
    "roi_output_size",
    "roi_sampling_ratio",
    "representation_size",
    "score_thresh",
    "nms_thresh",
    "max_detections",
)


def _head_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The builder arguments :class:`FasterRCNN` takes as they are."""
    return {k: args[k] for k in _HEAD_KEYS}


BACKBONE_KEYS = ("pretrained", "trainable_layers", "frozen_bn", "widths", "blocks", "fpn_channels")


def head_settings(twin: Any, overrides: dict[str, Any], name: str, own: str) -> dict[str, Any]:
    """The RPN / box-head defaults of ``twin`` (the Faster R-CNN builder a two-stage variant
    extends) with ``overrides``, each checked: the variants take them as ``**head`` instead
    of restating every default. ``own`` names the variant's own keys for the message."""
    params = inspect.signature(twin).parameters.items()
    defaults = {
        k: p.default
        for k, p in params
        if p.default is not inspect.Parameter.empty and k not in BACKBONE_KEYS
    }
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model.{unknown[0]}: {name} has no such setting; valid besides the backbone and "
            f"{own} keys: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **overrides}
