"""U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015), with BatchNorm and 'same' padding as in modern kits.

Own encoder of 4 max-pool stages (channels ``c, 2c, 4c, 8c, 8c``); the decoder upsamples
(bilinear, or a 2x2 transposed conv with ``use_deconv``), concatenates the skip and applies two
3x3 convs. Max pooling uses ``ceil_mode`` and upsampled maps are fitted to the skip size, so any
input size works.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.seg.models.layers import ConvBNReLU, resize_to
from e2ekit.seg.registry import MODELS

__all__ = ["UNet", "unet", "unet_tiny"]


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )


class Up(nn.Module):
    """Upsample ``x`` to the skip's size, concatenate, two 3x3 convs."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, deconv: bool
    ) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2) if deconv else None
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.deconv is not None:
            # ceil-mode pooling makes the deconv output >= the skip: crop (dynamic Slice).
            x = self.deconv(x)[:, :, : skip.shape[2], : skip.shape[3]]
        else:
            x = resize_to(x, skip)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int, base_channels: int = 64, use_deconv: bool = False) -> None:
        super().__init__()
        c = base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 8 * c]
        self.inc = DoubleConv(3, c)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.downs = nn.ModuleList(DoubleConv(a, b) for a, b in pairwise(widths))
        # Decoder: 8c(+8c) -> 4c, 4c(+4c) -> 2c, 2c(+2c) -> c, c(+c) -> c.
        self.ups = nn.ModuleList(
            [
                Up(widths[4], widths[3], widths[2], use_deconv),
                Up(widths[2], widths[2], widths[1], use_deconv),
                Up(widths[1], widths[1], widths[0], use_deconv),
                Up(widths[0], widths[0], widths[0], use_deconv),
            ]
        )
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return [self.classifier(y)]  # already (B, K, H, W)


@MODELS.register("unet")
def unet(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    base_channels: int = 64,
    use_deconv: bool = False,
) -> UNet:
    """Original U-Net; ``backbone`` is accepted for a uniform signature and must be None."""
    _no_backbone("unet", backbone)
    return UNet(num_classes, base_channels, use_deconv)


@MODELS.register("unet_tiny")
def unet_tiny(
    num_classes: int, backbone: dict[str, Any] | None = None, use_deconv: bool = False
) -> UNet:
    _no_backbone("unet_tiny", backbone)
    return UNet(num_classes, base_channels=8, use_deconv=use_deconv)


def _no_backbone(name: str, backbone: dict[str, Any] | None) -> None:
    if backbone:
        raise ConfigError(f"model '{name}' has its own encoder; remove 'backbone' from the config")
