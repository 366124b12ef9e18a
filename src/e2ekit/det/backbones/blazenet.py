"""BlazeNet, the BlazeFace feature extractor (Bazarevsky et al., "BlazeFace: Sub-millisecond
Neural Face Detection on Mobile GPUs", 2019), front-camera model of the paper's Table 4.

A 5x5 stride-2 conv (24 channels), five single BlazeBlocks (5x5 depthwise + 1x1 pointwise,
residual) and six double BlazeBlocks (two depthwise/pointwise pairs around a 24-channel
bottleneck). A stride-2 block max-pools its shortcut and zero-pads the extra channels. On a
128x128 input the maps are 16x16x96 (after the third double block) and 8x8x96 (the last),
returned at strides 8 and 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.core.weights import load_backbone_weights
from e2ekit.det.registry import BACKBONES

__all__ = ["BlazeBlock", "BlazeNet", "blazenet", "blazenet_tiny"]


def _dw_pw(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    """5x5 depthwise conv + BN, then 1x1 pointwise conv + BN (no activation)."""
    return [
        nn.Conv2d(in_channels, in_channels, 5, stride, 2, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class BlazeBlock(nn.Module):
    """Single BlazeBlock, or a double one when ``mid_channels`` is given.

    ``relu(branch(x) + shortcut(x))``; the shortcut is a 2x2 max-pool when ``stride`` is 2 and
    zero-pads channels when ``out_channels > in_channels``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, mid_channels: int | None = None
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"BlazeBlock stride must be 1 or 2, got {stride}")
        if out_channels < in_channels:
            raise ValueError("BlazeBlock cannot reduce channels (the shortcut only pads)")
        if mid_channels is None:
            layers = _dw_pw(in_channels, out_channels, stride)
        else:
            layers = [
                *_dw_pw(in_channels, mid_channels, stride),
                nn.ReLU(inplace=True),
                *_dw_pw(mid_channels, out_channels, 1),
            ]
        self.branch = nn.Sequential(*layers)
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.stride == 2:
            shortcut = F.max_pool2d(shortcut, 2, 2, ceil_mode=True)
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))  # zero channels appended
        return F.relu(self.branch(x) + shortcut)


class BlazeNet(nn.Module):
    """Stem conv + BlazeBlocks; returns the output of the blocks listed in ``taps``.

    Args:
        stem_channels: channels of the 5x5 stride-2 stem.
        blocks: ``(out, stride)`` for a single block, ``(mid, out, stride)`` for a double.
        taps: indices of the blocks whose outputs are returned (in order).
    """

    def __init__(
        self,
        stem_channels: int = 24,
        blocks: Sequence[Sequence[int]] = (),
        taps: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 5, 2, 2, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        layers, channels, stride, self.strides, self.out_channels = [], stem_channels, 2, [], []
        for i, spec in enumerate(blocks):
            if len(spec) == 2:
                out, s = spec
                layers.append(BlazeBlock(channels, out, s))
            else:
                mid, out, s = spec
                layers.append(BlazeBlock(channels, out, s, mid))
            channels, stride = out, stride * s
            if i in taps:
                self.strides.append(stride)
                self.out_channels.append(out)
        self.blocks = nn.ModuleList(layers)
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _finish(net: BlazeNet, pretrained: str | None) -> BlazeNet:
    if pretrained:
        load_backbone_weights(net, pretrained)
    return net


@BACKBONES.register("blazenet")
def blazenet(pretrained: str | None = None) -> BlazeNet:
    """The paper's front model: 96-channel maps at strides 8 and 16."""
    blocks = [
        (24, 1), (24, 1), (48, 2), (48, 1), (48, 1),  # single BlazeBlocks
        (24, 96, 2), (24, 96, 1), (24, 96, 1),  # double: 16x16 at 128 px
        (24, 96, 2), (24, 96, 1), (24, 96, 1),  # double: 8x8
    ]  # fmt: skip
    return _finish(BlazeNet(24, blocks, taps=(7, 10)), pretrained)


@BACKBONES.register("blazenet_tiny")
def blazenet_tiny(pretrained: str | None = None) -> BlazeNet:
    """Three single and two double blocks, 8..32 channels, for tests."""
    blocks = [(8, 1), (16, 2), (16, 1), (8, 24, 2), (8, 32, 2)]
    return _finish(BlazeNet(8, blocks, taps=(3, 4)), pretrained)
