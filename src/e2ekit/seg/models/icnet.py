"""ICNet (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018).

An image cascade of three branches:

* 1/4 resolution input -> the deep, dilated backbone end (stages 2-3) + pyramid pooling,
  output at 1/32;
* 1/2 resolution input -> the backbone start (stages 0-1), shared with the 1/4 branch, which
  continues from these features downsampled by 2, output at 1/16;
* full resolution input -> three cheap stride-2 convs, output at 1/8.

Cascade feature fusion (CFF) units merge low- into high-resolution branches (upsample + dilated
3x3 ConvBN on the coarse map, 1x1 ConvBN on the fine one, sum, ReLU) and emit an auxiliary
classifier on the upsampled coarse map (cascade label guidance). In training the network
returns ``[main, aux_1/8, aux_1/16]``. The backbone must implement ``stage(i, x)``
(:class:`~e2ekit.seg.backbones.StagedBackbone`); output stride 8 matches the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.seg.models.layers import (
    ConvBN,
    ConvBNReLU,
    adaptive_avg_pool2d,
    build_backbone,
    resize_to,
)
from e2ekit.seg.registry import MODELS

__all__ = ["ICNet", "icnet", "icnet_tiny"]


class CascadeFeatureFusion(nn.Module):
    """Fuse a coarse map into a finer one; also returns aux logits on the upsampled coarse map."""

    def __init__(self, low_channels: int, high_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        self.low = ConvBN(low_channels, out_channels, 3, dilation=2)
        self.high = ConvBN(high_channels, out_channels, 1)
        self.aux = nn.Conv2d(low_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = resize_to(low, high)
        fused = F.relu(self.low(up) + self.high(high))
        return fused, self.aux(up)


class PyramidSum(nn.Module):
    """ICNet's parameter-free pyramid pooling: the input plus its upsampled bin averages."""

    def __init__(self, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for b in self.bins:
            out = out + resize_to(adaptive_avg_pool2d(x, b), x)
        return out


class ICNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        branch_channels: Sequence[int] = (32, 32, 64),
        fuse_channels: int = 128,
        sub4_channels: int = 256,
        bins: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "stage", None)):
            raise ConfigError(
                f"icnet needs a backbone with stage(i, x) (a StagedBackbone), "
                f"got {type(backbone).__name__}"
            )
        self.backbone = backbone
        c2, c4 = backbone.out_channels[1], backbone.out_channels[3]
        a, b, c = branch_channels
        self.sub1 = nn.Sequential(
            ConvBNReLU(3, a, 3, stride=2),
            ConvBNReLU(a, b, 3, stride=2),
            ConvBNReLU(b, c, 3, stride=2),
        )
        self.ppm = PyramidSum(bins)
        self.sub4_proj = ConvBNReLU(c4, sub4_channels, 1)
        self.cff_24 = CascadeFeatureFusion(sub4_channels, c2, fuse_channels, num_classes)
        self.cff_12 = CascadeFeatureFusion(fuse_channels, c, fuse_channels, num_classes)
        self.classifier = nn.Conv2d(fuse_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.sub1(x)  # 1/8
        x2 = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        f2 = self.backbone.stage(1, self.backbone.stage(0, x2))  # 1/2 * 1/8 = 1/16
        f4 = F.interpolate(f2, scale_factor=0.5, mode="bilinear", align_corners=False)
        f4 = self.backbone.stage(3, self.backbone.stage(2, f4))  # 1/32 at output stride 8
        f4 = self.sub4_proj(self.ppm(f4))
        f24, aux_16 = self.cff_24(f4, f2)  # 1/16
        f124, aux_8 = self.cff_12(f24, f1)  # 1/8
        # The paper upsamples x2 before the 1x1 classifier; both are linear and commute, so
        # classify at 1/8 and upsample once (a quarter of the classifier cost).
        outs = [resize_to(self.classifier(f124), x)]
        if self.training:
            outs += [resize_to(aux_8, x), resize_to(aux_16, x)]
        return outs


@MODELS.register("icnet")
def icnet(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    branch_channels: Sequence[int] = (32, 32, 64),
    fuse_channels: int = 128,
    sub4_channels: int = 256,
    bins: Sequence[int] = (1, 2, 3, 6),
) -> ICNet:
    """ICNet; default backbone ResNet-50 at output stride 8 (the paper's PSPNet50 trunk)."""
    net = build_backbone(backbone, {"type": "resnet50", "output_stride": 8})
    return ICNet(num_classes, net, branch_channels, fuse_channels, sub4_channels, bins)


@MODELS.register("icnet_tiny")
def icnet_tiny(num_classes: int, backbone: dict[str, Any] | None = None) -> ICNet:
    net = build_backbone(backbone, {"type": "resnet_tiny", "output_stride": 8})
    return ICNet(num_classes, net, branch_channels=(8, 8, 16), fuse_channels=16, sub4_channels=16)
