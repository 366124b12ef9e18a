"""DarkNet-53 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018).

A 3x3 stem conv then five stages, each a stride-2 3x3 conv followed by residual blocks
(1x1 halving the channels, 3x3 restoring them); every conv is conv-BN-LeakyReLU(0.1). Stage
depths are [1, 2, 8, 8, 4] and channels 64..1024; the last three stages give C3, C4, C5 at
strides 8/16/32 (256/512/1024 channels). No classifier: 40.6M parameters. timm's
``darknet53`` files (``stem.conv1``, ``stages.N.conv_down`` / ``blocks.M``) load by renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2ekit.core.weights import WeightSource, load_backbone_weights, register_source
from e2ekit.det.registry import BACKBONES

__all__ = ["ConvBNLeaky", "DarkNet", "DarkResidual", "darknet53", "darknet53_tiny"]


class ConvBNLeaky(nn.Sequential):
    """Conv (no bias, 'same' padding) + BatchNorm + LeakyReLU(0.1): DarkNet's only unit."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.1, inplace=True),
        )


class DarkResidual(nn.Module):
    """``x + conv3x3(conv1x1(x))`` with the 1x1 halving the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNLeaky(channels, channels // 2, 1)
        self.conv2 = ConvBNLeaky(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class DarkNet(nn.Module):
    """DarkNet stem + 5 stages; returns the maps of the last three (strides 8/16/32).

    Args:
        depths: residual blocks per stage.
        channels: stem channels then one entry per stage.
    """

    def __init__(
        self,
        depths: Sequence[int] = (1, 2, 8, 8, 4),
        channels: Sequence[int] = (32, 64, 128, 256, 512, 1024),
    ) -> None:
        super().__init__()
        if len(depths) != 5 or len(channels) != 6:
            raise ValueError(f"DarkNet needs 5 depths and 6 channels, got {depths}, {channels}")
        self.stem = ConvBNLeaky(3, channels[0], 3)
        self.stages = nn.ModuleList(
            nn.Sequential(
                ConvBNLeaky(c_in, c_out, 3, stride=2),
                *(DarkResidual(c_out) for _ in range(depth)),
            )
            for depth, c_in, c_out in zip(depths, channels[:-1], channels[1:], strict=True)
        )
        self.out_channels = list(channels[3:])
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                feats.append(x)  # C3 (B, c3, H/8, W/8), C4, C5
        return feats


# timm's DarkNet-53 (``darknet53.c2ns_in1k``) is the only ImageNet file a torch user can get;
# its names are mapped on load. torchvision has none.
register_source(
    WeightSource(
        "darknet53",
        timm=("timm/darknet53.c2ns_in1k", "model.safetensors"),
        reference=lambda: DarkNet(),
        head=("head.",),
        note="timm trained it with LeakyReLU(0.01), ours uses 0.1: a start for fine-tuning",
    )
)


def _finish(net: DarkNet, pretrained: str | None, arch: str | None = None) -> DarkNet:
    if pretrained:
        load_backbone_weights(net, pretrained, arch=arch)
    return net


@BACKBONES.register("darknet53")
def darknet53(pretrained: str | None = None) -> DarkNet:
    """DarkNet-53: C3/C4/C5 with 256/512/1024 channels."""
    return _finish(DarkNet(), pretrained, "darknet53")


@BACKBONES.register("darknet53_tiny")
def darknet53_tiny(pretrained: str | None = None, width: float = 0.25) -> DarkNet:
    """A narrow, shallow DarkNet (depths [1, 1, 2, 2, 1], channels x ``width``) for tests and
    CPU runs; not the YOLOv3-tiny paper backbone. C3/C4/C5: 64/128/256 channels at 0.25.
    """
    channels = [max(8, round(c * width)) for c in (32, 64, 128, 256, 512, 1024)]
    return _finish(DarkNet(depths=(1, 1, 2, 2, 1), channels=channels), pretrained)
