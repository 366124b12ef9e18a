"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

Pyramid pooling (bins 1, 2, 3, 6) on the last backbone map adds global context; an auxiliary
head on the third stage (stride 16 at output stride 32, 8 when dilated) deepens supervision in
training, as in the paper (loss weight 0.4 is the loss config's business, not the network's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from e2ekit.seg.models.layers import PPM, SegHead, build_backbone, resize_to
from e2ekit.seg.registry import MODELS

__all__ = ["PSPNet", "pspnet", "pspnet_tiny"]


class PSPNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        aux_channels: int = 256,
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c3, c4 = backbone.out_channels[2], backbone.out_channels[3]
        self.ppm = PPM(c4, c4 // len(bins), bins)
        self.head = SegHead(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.aux_head = SegHead(c3, aux_channels, num_classes, dropout) if aux else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        outs = [resize_to(self.head(self.ppm(feats[3])), x)]
        if self.training and self.aux_head is not None:
            outs.append(resize_to(self.aux_head(feats[2]), x))
        return outs


@MODELS.register("pspnet")
def pspnet(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    bins: Sequence[int] = (1, 2, 3, 6),
    head_channels: int = 512,
    aux_channels: int = 256,
    dropout: float = 0.1,
    aux: bool = True,
) -> PSPNet:
    """PSPNet; default backbone ResNet-50 at output stride 8."""
    net = build_backbone(backbone, {"type": "resnet50", "output_stride": 8})
    return PSPNet(num_classes, net, bins, head_channels, aux_channels, dropout, aux)


@MODELS.register("pspnet_tiny")
def pspnet_tiny(num_classes: int, backbone: dict[str, Any] | None = None) -> PSPNet:
    net = build_backbone(backbone, {"type": "resnet_tiny", "output_stride": 8})
    return PSPNet(num_classes, net, head_channels=16, aux_channels=8)
