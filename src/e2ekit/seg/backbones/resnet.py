"""ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Thin wrappers over ``torchvision.models.resnet*`` (always ``weights=None``) returning the
outputs of ``layer1..layer4`` (strides 4/8/16/32). Module names stay torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1``...), so an official torchvision state dict loads with
zero missing keys; only ``fc.*`` is unexpected (timm's ResNet files use the same names).
``pretrained: imagenet`` reads the file cached by ``e2ekit weights import``.
``output_stride`` 16/8 replaces the stride of ``layer4`` (and ``layer3``) with dilation, as in
DeepLab (Chen et al., 2017); this is done by ``dilate_``, which reproduces
``replace_stride_with_dilation`` exactly (tested) and also works for the BasicBlock nets that
torchvision refuses to dilate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from e2ekit.seg.backbones._pretrained import (
    StagedBackbone,
    check_output_stride,
    dilate_,
    load_backbone_weights,
)
from e2ekit.seg.registry import BACKBONES

__all__ = ["ResNetBackbone", "resnet18", "resnet34", "resnet50", "resnet101", "resnet_tiny"]


def _last_conv_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    conv = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    return conv.out_channels


class ResNetBackbone(StagedBackbone):
    """ResNet stem + 4 residual layers; ``forward`` returns the 4 layer outputs."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        bn1: nn.BatchNorm2d,
        layers: Sequence[nn.Sequential],
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self.conv1 = conv1
        self.bn1 = bn1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # Stride -> dilation for the layers past output_stride (layer3 at os 8, layer4 at 8/16).
        stride = 8
        for layer in (self.layer3, self.layer4):
            if stride * 2 > output_stride:
                dilate_(
                    layer,
                    dilation=stride * 2 // output_stride,
                    previous_dilation=max(1, stride // output_stride),
                )
            stride *= 2
        self.out_channels = [_last_conv_channels(layer) for layer in layers]
        self.strides = [4, 8, min(16, output_stride), min(32, output_stride)]

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer = (self.layer1, self.layer2, self.layer3, self.layer4)[index]
        return layer(x)


def _from_torchvision(
    factory: Callable[..., tvm.ResNet], pretrained: str | None, output_stride: int
) -> ResNetBackbone:
    net = factory(weights=None)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    backbone = ResNetBackbone(net.conv1, net.bn1, layers, output_stride)
    if pretrained:
        load_backbone_weights(backbone, pretrained, arch=factory.__name__)
    return backbone


@BACKBONES.register("resnet18")
def resnet18(pretrained: str | None = None, output_stride: int = 32) -> ResNetBackbone:
    """ResNet-18: channels (64, 128, 256, 512)."""
    return _from_torchvision(tvm.resnet18, pretrained, output_stride)


@BACKBONES.register("resnet34")
def resnet34(pretrained: str | None = None, output_stride: int = 32) -> ResNetBackbone:
    """ResNet-34: channels (64, 128, 256, 512)."""
    return _from_torchvision(tvm.resnet34, pretrained, output_stride)


@BACKBONES.register("resnet50")
def resnet50(pretrained: str | None = None, output_stride: int = 32) -> ResNetBackbone:
    """ResNet-50: channels (256, 512, 1024, 2048)."""
    return _from_torchvision(tvm.resnet50, pretrained, output_stride)


@BACKBONES.register("resnet101")
def resnet101(pretrained: str | None = None, output_stride: int = 32) -> ResNetBackbone:
    """ResNet-101: channels (256, 512, 1024, 2048)."""
    return _from_torchvision(tvm.resnet101, pretrained, output_stride)


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A stage of BasicBlocks with torchvision's layout (and hence its parameter names)."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


@BACKBONES.register("resnet_tiny")
def resnet_tiny(
    pretrained: str | None = None,
    output_stride: int = 32,
    widths: Sequence[int] = (8, 16, 32, 64),
    blocks: int = 1,
) -> ResNetBackbone:
    """A few-thousand-parameter BasicBlock ResNet for tests and smoke runs."""
    stem = widths[0]
    conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    layers, inplanes = [], stem
    for i, width in enumerate(widths):
        layers.append(_make_layer(inplanes, width, blocks, stride=1 if i == 0 else 2))
        inplanes = width
    # torchvision's init: kaiming convs, unit BN (BasicBlock does not init itself).
    for m in [conv1, *layers]:
        for sub in m.modules():
            if isinstance(sub, nn.Conv2d):
                nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
    backbone = ResNetBackbone(conv1, nn.BatchNorm2d(stem), layers, output_stride)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    return backbone
