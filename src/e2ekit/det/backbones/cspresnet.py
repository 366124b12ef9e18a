"""CSPRepResNet (Xu et al., "PP-YOLOE: An evolved version of YOLO", 2022), PP-YOLOE's backbone.

- Stem: three 3x3 conv-BN-Swish (the first at stride 2; PaddleDetection's "large stem").
- Four CSP stages, each a stride-2 3x3 conv to ``mid = (in + out) / 2`` channels, then two
  1x1 convs splitting it into halves; one half runs through ``n`` residual blocks (a 3x3
  conv-BN-Swish and a RepVGG block), the halves are concatenated, reweighted by effective
  squeeze-excitation (ESE: global average, one 1x1 conv, hard sigmoid) and mixed by a 1x1 conv.
- RepVGG block: ``act(BN(conv3x3(x)) + BN(conv1x1(x)))`` in training; in eval mode the two
  branches run as the one 3x3 conv they are equivalent to (kernels and BN folded on the fly,
  so EMA weights and exports always see the current parameters; ONNX constant folding
  leaves one ``Conv`` with the fused kernel as its weight). :meth:`RepVggBlock.fuse` makes
  that permanent.

Widths and depths scale as PaddleDetection's ``width_mult`` / ``depth_mult``: s 0.50 / 0.33,
m 0.75 / 0.67, l 1.0 / 1.0. Maps at strides 8/16/32 are returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.core.weights import load_pretrained
from e2ekit.det.registry import BACKBONES

__all__ = [
    "BasicBlock",
    "CSPRepResNet",
    "CSPResStage",
    "ConvBNAct",
    "EffectiveSE",
    "RepVggBlock",
    "cspresnet",
    "fuse_repvgg",
]

BASE_CHANNELS = (64, 128, 256, 512, 1024)
BASE_DEPTHS = (3, 6, 6, 3)


class ConvBNAct(nn.Sequential):
    """Conv (no bias, 'same' padding) + BatchNorm + Swish (``act=False``: no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    kernel = conv.weight * scale.view(-1, 1, 1, 1)
    return kernel, bn.bias - bn.running_mean * scale


class RepVggBlock(nn.Module):
    """``SiLU(BN(conv3x3(x)) + BN(conv1x1(x)))``; one 3x3 conv in eval mode (see module doc)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, act=False)
        self.conv2 = ConvBNAct(in_channels, out_channels, 1, act=False)
        self.act = nn.SiLU(inplace=True)
        self.fused: nn.Conv2d | None = None
        centre = torch.zeros(1, 1, 3, 3)
        centre[..., 1, 1] = 1
        self.register_buffer("centre", centre, persistent=False)  # places 1x1 in 3x3

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 kernel and bias equal to both branches with their BN in eval mode."""
        k3, b3 = _fold_bn(self.conv1[0], self.conv1[1])
        k1, b1 = _fold_bn(self.conv2[0], self.conv2[1])
        # the 1x1 kernel at the centre of a 3x3 one: a product, not a pad, so a traced graph
        # keeps static shapes and ONNX constant folding turns all of it into one initializer
        return k3 + k1 * self.centre, b3 + b1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        if self.training:
            return self.act(self.conv1(x) + self.conv2(x))
        kernel, bias = self.fused_kernel()
        return self.act(F.conv2d(x, kernel, bias, padding=1))

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the two branches by one conv for good (deployment; no more training)."""
        if self.fused is not None:
            return
        kernel, bias = self.fused_kernel()
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, padding=1)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.fused = conv.to(kernel.device)
        del self.conv1, self.conv2


def fuse_repvgg(module: nn.Module) -> nn.Module:
    """Fuse every :class:`RepVggBlock` inside ``module`` (in place); returns ``module``."""
    for m in module.modules():
        if isinstance(m, RepVggBlock):
            m.fuse()
    return module


class BasicBlock(nn.Module):
    """3x3 conv-BN-Swish then a RepVGG block, with an optional residual connection."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3)
        self.conv2 = RepVggBlock(out_channels, out_channels)
        self.shortcut = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (CenterMask): ``x * hardsigmoid(fc(mean_hw(x)))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class CSPResStage(nn.Module):
    """Stride-2 conv, CSP split over ``depth`` residual blocks, ESE, 1x1 fusion conv."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int = 2) -> None:
        super().__init__()
        mid = (in_channels + out_channels) // 2
        self.conv_down = ConvBNAct(in_channels, mid, 3, stride) if stride == 2 else nn.Identity()
        self.conv1 = ConvBNAct(mid, mid // 2, 1)
        self.conv2 = ConvBNAct(mid, mid // 2, 1)
        self.blocks = nn.Sequential(*(BasicBlock(mid // 2, mid // 2) for _ in range(depth)))
        self.attn = EffectiveSE(mid)
        self.conv3 = ConvBNAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_down(x)
        y = torch.cat([self.conv1(x), self.blocks(self.conv2(x))], dim=1)  # (B, mid, H, W)
        return self.conv3(self.attn(y))


class CSPRepResNet(nn.Module):
    """Large stem + four CSP stages; returns the last three maps (strides 8/16/32).

    Args:
        width_mult: channel multiplier of (64, 128, 256, 512, 1024).
        depth_mult: block-count multiplier of (3, 6, 6, 3).
        channels: explicit stem + stage channels (5 values), instead of ``width_mult``.
        depths: explicit blocks per stage (4 values), instead of ``depth_mult``.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        channels: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        ch = list(channels or [max(round(c * width_mult), 1) for c in BASE_CHANNELS])
        ds = list(depths or [max(round(d * depth_mult), 1) for d in BASE_DEPTHS])
        if len(ch) != 5 or len(ds) != 4:
            raise ValueError(f"need 5 channels and 4 depths, got {ch} and {ds}")
        self.stem = nn.Sequential(
            ConvBNAct(3, ch[0] // 2, 3, 2),
            ConvBNAct(ch[0] // 2, ch[0] // 2, 3),
            ConvBNAct(ch[0] // 2, ch[0], 3),
        )
        self.stages = nn.ModuleList(CSPResStage(ch[i], ch[i + 1], ds[i]) for i in range(4))
        self.out_channels = ch[2:]
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, c0, H/2, W/2)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                feats.append(x)  # strides 8, 16, 32
        return feats


@BACKBONES.register("cspresnet")
def cspresnet(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    channels: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    pretrained: str | None = None,
) -> CSPRepResNet:
    """CSPRepResNet; ``width_mult``/``depth_mult`` 0.50/0.33 is PP-YOLOE-s's, 0.75/0.67 m's."""
    net = CSPRepResNet(width_mult, depth_mult, channels, depths)
    if pretrained:
        load_pretrained(net, pretrained)
    return net
