"""MobileNetV3-Large (Howard et al., "Searching for MobileNetV3", ICCV 2019) for detection.

Wraps ``torchvision.models.mobilenet_v3_large(weights=None).features`` without its final
960-channel 1x1 conv and taps the last block at each stride 8/16/32 (40/112/160 channels), as
PaddleDetection's ``yolov3_mobilenet_v3_large`` does (``feature_maps: [7, 13, 16]``). The
Sequential keeps its torchvision name, so an official ImageNet state dict loads with zero
missing keys (``features.16.*`` and ``classifier.*`` are unexpected); timm's
``mobilenetv3_large_100`` files are renamed to that layout on load, and ``pretrained:
imagenet`` reads the file cached by ``e2ekit weights import``.
"""

from __future__ import annotations

from functools import partial

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

from e2ekit.core.weights import load_backbone_weights
from e2ekit.det.registry import BACKBONES

__all__ = ["MobileNetV3Det", "mobilenet_v3_large", "mobilenet_v3_tiny"]


def _block_stride(block: nn.Module) -> int:
    return max((m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d)), default=1)


def _block_channels(block: nn.Module) -> int:
    return next(m.out_channels for m in reversed(list(block.modules())) if isinstance(m, nn.Conv2d))


class MobileNetV3Det(nn.Module):
    """A torchvision MobileNet ``features`` stack returning the maps at strides 8/16/32."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        stride, cumulative = 1, []
        for block in features:
            stride *= _block_stride(block)
            cumulative.append(stride)
        if cumulative[-1] != 32:
            raise ValueError(f"MobileNet features must end at stride 32: {cumulative}")
        self.taps = [max(i for i, s in enumerate(cumulative) if s == t) for t in (8, 16, 32)]
        self.features = features
        self.out_channels = [_block_channels(features[i]) for i in self.taps]
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _finish(
    features: nn.Sequential, pretrained: str | None, arch: str | None = None
) -> MobileNetV3Det:
    net = MobileNetV3Det(features)
    if pretrained:
        load_backbone_weights(net, pretrained, arch=arch)
    return net


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(pretrained: str | None = None) -> MobileNetV3Det:
    """MobileNetV3-Large taps: 40/112/160 channels at strides 8/16/32."""
    features = tvm.mobilenet_v3_large(weights=None).features
    return _finish(features[:-1], pretrained, "mobilenet_v3_large")  # drop the 960-ch 1x1 conv


@BACKBONES.register("mobilenet_v3_tiny")
def mobilenet_v3_tiny(pretrained: str | None = None) -> MobileNetV3Det:
    """A 6-block MobileNetV3 (SE + hardswish) with 16/32/48 channels, for tests."""
    cfg = partial(InvertedResidualConfig, width_mult=1.0)
    setting = [
        cfg(8, 3, 16, 8, False, "RE", 2, 1),  # stride 4
        cfg(8, 3, 32, 16, False, "RE", 2, 1),  # stride 8
        cfg(16, 5, 48, 32, True, "HS", 2, 1),  # stride 16
        cfg(32, 3, 96, 32, True, "HS", 1, 1),
        cfg(32, 5, 96, 48, True, "HS", 2, 1),  # stride 32
        cfg(48, 5, 144, 48, True, "HS", 1, 1),
    ]
    net = MobileNetV3(setting, last_channel=64)
    return _finish(net.features[:-1], pretrained)
