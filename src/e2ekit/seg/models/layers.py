"""Building blocks shared by the seg networks: conv units, pooling modules, heads.

Every block is written to export to ONNX (opset 17) with dynamic height/width: sizes are
always taken from tensors at run time (``resize_to``), never frozen into Python ints, and
pyramid pooling uses :func:`adaptive_avg_pool2d`, an integral-image version of PyTorch's
adaptive average pooling, because ``F.adaptive_avg_pool2d`` with an output size other than 1
cannot be exported once the input size is dynamic.

Pooled 1x1 maps (global context branches) use a biased conv without BatchNorm: BatchNorm on a
(B, C, 1, 1) tensor fails in training for batch size 1 and its statistics are meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from e2ekit.core.errors import ConfigError
from e2ekit.seg.registry import BACKBONES

__all__ = [
    "ASPP",
    "PPM",
    "SPPM",
    "UAFM",
    "ConvBN",
    "ConvBNReLU",
    "ImageStandardize",
    "PoolConv",
    "SegHead",
    "SeparableConvBNReLU",
    "adaptive_avg_pool2d",
    "build_backbone",
    "resize_to",
]


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref`` (dynamic in ONNX)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def _bin_edges(size: Any, bins: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start/end indices of ``bins`` adaptive-pooling cells over ``size`` (PyTorch's rule)."""
    i = torch.arange(bins, device=device)
    start = (i * size) // bins  # floor(i * size / bins)
    end = ((i + 1) * size + bins - 1) // bins  # ceil((i + 1) * size / bins)
    return start, end


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` computed from an integral image; ONNX-dynamic.

    Each cell's sum is 4 lookups into the 2-D cumulative sum, so the cell edges may depend
    on the runtime size. The map is mean-centred and summed in float32 to keep the cumulative
    sums small and precise (also under autocast).
    """
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = (x - mean).float()
    # (B, C, H+1, W+1): integral[..., r, c] = sum of x[..., :r, :c]
    integral = F.pad(centred, (1, 0, 1, 0)).cumsum(2).cumsum(3)
    r0, r1 = _bin_edges(x.shape[2], bins, x.device)
    c0, c1 = _bin_edges(x.shape[3], bins, x.device)
    rows = integral.index_select(2, r1) - integral.index_select(2, r0)  # (B, C, bins, W+1)
    cells = rows.index_select(3, c1) - rows.index_select(3, c0)  # (B, C, bins, bins)
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return (cells / area.to(cells.dtype)).to(x.dtype) + mean


class ConvBNReLU(Conv2dNormActivation):
    """Conv (no bias) + BatchNorm + ReLU with 'same' padding for any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            norm_layer=nn.BatchNorm2d,
            activation_layer=nn.ReLU,
        )


class ConvBN(Conv2dNormActivation):
    """Conv (no bias) + BatchNorm, no activation (before a sum or a sigmoid)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            norm_layer=nn.BatchNorm2d,
            activation_layer=None,
        )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise (dilated) ConvBN + pointwise ConvBNReLU: DeepLabV3+'s atrous separable conv."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__(
            ConvBN(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


class PoolConv(nn.Module):
    """Adaptive average pool to ``bins`` x ``bins`` then a 1x1 conv + ReLU (BN unless 1x1)."""

    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        if bins == 1:
            self.conv: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)
            )
        else:
            self.conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(adaptive_avg_pool2d(x, self.bins))  # (B, out, bins, bins)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (Chen et al., DeepLabV3, 2017) with image pooling.

    ``rates[0]`` is the 1x1 branch (conventionally 1); the others are dilated 3x3 branches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (1, 6, 12, 18),
        separable: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        for rate in rates[1:]:
            if separable:
                branches.append(SeparableConvBNReLU(in_channels, out_channels, 3, dilation=rate))
            else:
                branches.append(ConvBNReLU(in_channels, out_channels, 3, dilation=rate))
        self.branches = nn.ModuleList(branches)
        self.image_pool = PoolConv(in_channels, out_channels, 1)
        self.project = nn.Sequential(
            ConvBNReLU(out_channels * (len(branches) + 1), out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)  # (B, out, 1, 1)
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class PPM(nn.Module):
    """Pyramid Pooling Module (Zhao et al., PSPNet, 2017): input + upsampled pooled branches.

    Output channels: ``in_channels + len(bins) * branch_channels``.
    """

    def __init__(
        self, in_channels: int, branch_channels: int, bins: Sequence[int] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(PoolConv(in_channels, branch_channels, b) for b in bins)
        self.out_channels = in_channels + len(bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(resize_to(stage(x), x) for stage in self.stages)], dim=1)


class SPPM(nn.Module):
    """Simple Pyramid Pooling Module (PP-LiteSeg): summed pooled branches + one 3x3 conv."""

    def __init__(
        self,
        in_channels: int,
        inter_channels: int,
        out_channels: int,
        bins: Sequence[int] = (1, 2, 4),
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(PoolConv(in_channels, inter_channels, b) for b in bins)
        self.fuse = ConvBNReLU(inter_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for stage in self.stages:
            y = resize_to(stage(x), x)
            total = y if total is None else total + y
        return self.fuse(total)


class UAFM(nn.Module):
    """Unified Attention Fusion Module with spatial attention (PP-LiteSeg, Peng et al., 2022).

    ``alpha = sigmoid(conv([mean_c(up), max_c(up), mean_c(low), max_c(low)]))`` weights the
    upsampled high-level feature against the projected low-level one.
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low = ConvBNReLU(low_channels, high_channels, 3)
        self.attention = nn.Sequential(ConvBNReLU(4, 2, 3), ConvBN(2, 1, 3))
        self.out = ConvBNReLU(high_channels, out_channels, 3)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        up = resize_to(high, low)
        stats = torch.cat(
            [
                up.mean(dim=1, keepdim=True),
                up.amax(dim=1, keepdim=True),
                low.mean(dim=1, keepdim=True),
                low.amax(dim=1, keepdim=True),
            ],
            dim=1,
        )  # (B, 4, H, W)
        alpha = torch.sigmoid(self.attention(stats))  # (B, 1, H, W)
        return self.out(up * alpha + low * (1 - alpha))


class ImageStandardize(nn.Module):
    """Per-image, per-channel ``(x - mean) / sqrt(var + eps)`` over the spatial axes.

    Written out rather than ``nn.InstanceNorm2d`` so the ONNX export is plain reductions
    (no training-mode instance norm, no warning) and the statistics are always the input's.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps)


class SegHead(nn.Sequential):
    """3x3 ConvBNReLU + dropout + 1x1 classifier."""

    def __init__(
        self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__(
            ConvBNReLU(in_channels, mid_channels, 3),
            nn.Dropout(dropout),
            nn.Conv2d(mid_channels, num_classes, 1),
        )


def build_backbone(spec: dict[str, Any] | None, default: dict[str, Any]) -> nn.Module:
    """Build a ``BACKBONES`` spec, filling gaps from the network's ``default`` spec.

    A spec without ``type`` only overrides arguments of the default backbone; a spec naming
    another backbone still inherits the network's default ``output_stride``.
    """
    if spec is None:
        merged = dict(default)
    elif "type" not in spec:
        merged = {**default, **spec}
    else:
        merged = {"output_stride": default.get("output_stride", 32), **spec}
    backbone = BACKBONES.build(merged)
    channels = getattr(backbone, "out_channels", None)
    if not (isinstance(channels, (list, tuple)) and len(channels) == 4):
        raise ConfigError(
            f"backbone '{merged['type']}' must expose 'out_channels' with 4 ints, got {channels!r}"
        )
    return backbone
