"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018).

ASPP on the last backbone map, then a light decoder that fuses the stride-4 features (projected
to ``low_level_channels``) before the classifier. ASPP ``rates`` are given for output stride 16
(the paper's convention) and scaled to the backbone's actual output stride, so the receptive
field stays the same when trading speed for resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from e2ekit.seg.models.layers import (
    ASPP,
    ConvBNReLU,
    SeparableConvBNReLU,
    build_backbone,
    resize_to,
)
from e2ekit.seg.registry import MODELS

__all__ = ["DeepLabV3P", "deeplabv3p", "deeplabv3p_tiny"]


def scale_rates(rates: Sequence[int], output_stride: int) -> list[int]:
    """Rates given at output stride 16, scaled to ``output_stride`` (the 1x1 rate stays 1)."""
    scaled = [rates[0]]
    for r in rates[1:]:
        scaled.append(max(1, r * 16 // output_stride))
    return scaled


class DeepLabV3P(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        aspp_out: int = 256,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        aspp_rates: Sequence[int] = (1, 6, 12, 18),
        separable: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c_low, c_high = backbone.out_channels[0], backbone.out_channels[3]
        output_stride = getattr(backbone, "output_stride", 16)
        self.aspp = ASPP(
            c_high, aspp_out, scale_rates(aspp_rates, output_stride), separable, dropout
        )
        self.low_proj = ConvBNReLU(c_low, low_level_channels, 1)
        conv = SeparableConvBNReLU if separable else ConvBNReLU
        self.decoder = nn.Sequential(
            conv(aspp_out + low_level_channels, decoder_channels, 3),
            conv(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        low = self.low_proj(feats[0])  # stride 4
        high = resize_to(self.aspp(feats[3]), low)
        y = self.decoder(torch.cat([high, low], dim=1))
        return [resize_to(self.classifier(y), x)]


@MODELS.register("deeplabv3p")
def deeplabv3p(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    aspp_out: int = 256,
    decoder_channels: int = 256,
    low_level_channels: int = 48,
    aspp_rates: Sequence[int] = (1, 6, 12, 18),
    separable: bool = True,
    dropout: float = 0.1,
) -> DeepLabV3P:
    """DeepLabV3+; default backbone ResNet-50 at output stride 8."""
    net = build_backbone(backbone, {"type": "resnet50", "output_stride": 8})
    return DeepLabV3P(
        num_classes,
        net,
        aspp_out,
        decoder_channels,
        low_level_channels,
        aspp_rates,
        separable,
        dropout,
    )


@MODELS.register("deeplabv3p_tiny")
def deeplabv3p_tiny(num_classes: int, backbone: dict[str, Any] | None = None) -> DeepLabV3P:
    net = build_backbone(backbone, {"type": "resnet_tiny", "output_stride": 8})
    return DeepLabV3P(num_classes, net, aspp_out=16, decoder_channels=16, low_level_channels=8)
