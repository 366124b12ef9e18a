"""MobileNet backbones: V2 (Sandler et al., CVPR 2018) and V3 (Howard et al., ICCV 2019).

Wrap ``torchvision.models.mobilenet_*`` (``weights=None``), keeping the ``features``
Sequential under its torchvision name so an official state dict loads with zero missing keys
(``classifier.*`` and, for V2, the dropped 1280-channel ``features.18`` are unexpected);
timm's ``mobilenetv2_100`` / ``mobilenetv3_*_100`` files are renamed to that layout on load.
The 4 maps are the last block at each stride 4/8/16/32, found by walking the blocks, so any
torchvision-built MobileNet (including the tiny test one) works. ``output_stride`` 16/8
trades the later strides for dilation on the depthwise convs (torchvision's ``dilated=True``
only covers the last stage, i.e. output stride 16).
"""

from __future__ import annotations

from functools import partial

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

from e2ekit.seg.backbones._pretrained import (
    StagedBackbone,
    check_output_stride,
    dilate_,
    load_backbone_weights,
)
from e2ekit.seg.registry import BACKBONES

__all__ = [
    "MobileNetBackbone",
    "mobilenet_tiny",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]


def _block_stride(block: nn.Module) -> int:
    return max(
        (m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d)),
        default=1,
    )


def _block_channels(block: nn.Module) -> int:
    return next(m.out_channels for m in reversed(list(block.modules())) if isinstance(m, nn.Conv2d))


class MobileNetBackbone(StagedBackbone):
    """A torchvision MobileNet ``features`` stack cut into 4 stages at strides 4/8/16/32."""

    def __init__(self, features: nn.Sequential, output_stride: int = 32) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self.features = features
        cumulative, stride = [], 1
        for block in features:
            stride *= _block_stride(block)
            cumulative.append(stride)
        ends = []
        for target in (4, 8, 16, 32):
            if target not in cumulative:
                raise ValueError(f"MobileNet features never reach stride {target}: {cumulative}")
            ends.append(max(i for i, s in enumerate(cumulative) if s == target))
        if ends[-1] != len(features) - 1:
            raise ValueError("MobileNet features go past stride 32")
        self._bounds = list(
            zip([0, *(e + 1 for e in ends[:-1])], [e + 1 for e in ends], strict=True)
        )
        # Blocks past output_stride: stride 1, dilation = the stride they would have had / os.
        for i, (block, s) in enumerate(zip(features, cumulative, strict=True)):
            if s > output_stride:
                previous = max(1, cumulative[i - 1] // output_stride)
                dilate_(block, dilation=s // output_stride, previous_dilation=previous)
        self.out_channels = [_block_channels(features[e]) for e in ends]
        self.strides = [min(s, output_stride) for s in (4, 8, 16, 32)]

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        start, end = self._bounds[index]
        for i in range(start, end):
            x = self.features[i](x)
        return x


def _finish(
    features: nn.Sequential, pretrained: str | None, output_stride: int, arch: str | None = None
) -> MobileNetBackbone:
    backbone = MobileNetBackbone(features, output_stride)
    if pretrained:
        load_backbone_weights(backbone, pretrained, arch=arch)
    return backbone


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(
    pretrained: str | None = None, output_stride: int = 32, width_mult: float = 1.0
) -> MobileNetBackbone:
    """MobileNetV2 up to the 320-channel block: channels (24, 32, 96, 320) at width 1."""
    net = tvm.mobilenet_v2(weights=None, width_mult=width_mult)
    arch = "mobilenet_v2" if width_mult == 1.0 else None
    return _finish(net.features[:-1], pretrained, output_stride, arch)  # drop the 1280-ch conv


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(pretrained: str | None = None, output_stride: int = 32) -> MobileNetBackbone:
    """MobileNetV3-Large: channels (24, 40, 112, 960)."""
    features = tvm.mobilenet_v3_large(weights=None).features
    return _finish(features, pretrained, output_stride, "mobilenet_v3_large")


@BACKBONES.register("mobilenet_v3_small")
def mobilenet_v3_small(pretrained: str | None = None, output_stride: int = 32) -> MobileNetBackbone:
    """MobileNetV3-Small: channels (16, 24, 48, 576)."""
    features = tvm.mobilenet_v3_small(weights=None).features
    return _finish(features, pretrained, output_stride, "mobilenet_v3_small")


@BACKBONES.register("mobilenet_tiny")
def mobilenet_tiny(pretrained: str | None = None, output_stride: int = 32) -> MobileNetBackbone:
    """A 5-block MobileNetV3 (SE + hardswish) with 8..32 channels, for tests."""
    cfg = partial(InvertedResidualConfig, width_mult=1.0)
    setting = [
        cfg(8, 3, 8, 8, True, "RE", 2, 1),  # stride 4
        cfg(8, 3, 24, 16, False, "RE", 2, 1),  # stride 8
        cfg(16, 5, 48, 24, True, "HS", 2, 1),  # stride 16
        cfg(24, 5, 72, 24, True, "HS", 1, 1),
        cfg(24, 5, 96, 32, True, "HS", 2, 1),  # stride 32 (+ 1x1 conv to 6 * 32 channels)
    ]
    net = MobileNetV3(setting, last_channel=64)
    return _finish(net.features, pretrained, output_stride)
