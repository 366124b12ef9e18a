"""PP-LiteSeg (Peng et al., "PP-LiteSeg: A Superior Real-Time Semantic Segmentation Model",
2022).

Encoder maps at strides 8/16/32 feed a Flexible and Lightweight Decoder (FLD) whose channels
shrink as resolution grows (``decoder_channels`` for 1/8, 1/16, 1/32). The stride-32 map goes
through the Simple Pyramid Pooling Module (SPPM: summed pooled branches, one 3x3 conv), then
Unified Attention Fusion Modules (UAFM, spatial attention) merge each coarser decoder output into
the next finer encoder map. The paper's STDC encoder is replaced by any ``BACKBONES`` entry
(default ResNet-18, output stride 32). In training, heads on the 1/16 and 1/32 decoder outputs
give auxiliary logits: ``[main, aux_1/16, aux_1/32]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from e2ekit.seg.models.layers import SPPM, UAFM, SegHead, build_backbone, resize_to
from e2ekit.seg.registry import MODELS

__all__ = ["PPLiteSeg", "pp_liteseg", "pp_liteseg_tiny"]


class PPLiteSeg(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        decoder_channels: Sequence[int] = (64, 96, 128),
        sppm_inter_channels: int = 128,
        sppm_out_channels: int = 128,
        sppm_bins: Sequence[int] = (1, 2, 4),
        head_channels: int = 64,
        aux: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        enc = list(backbone.out_channels[1:])  # strides 8, 16, 32
        self.sppm = SPPM(enc[2], sppm_inter_channels, sppm_out_channels, sppm_bins)
        # Coarse to fine: 1/32 fuses the SPPM output, 1/16 and 1/8 the previous UAFM output.
        high = [sppm_out_channels, decoder_channels[2], decoder_channels[1]]
        self.fusions = nn.ModuleList(
            UAFM(enc[i], high[2 - i], decoder_channels[i]) for i in (2, 1, 0)
        )
        self.heads = nn.ModuleList(
            SegHead(decoder_channels[i], head_channels, num_classes, dropout=0.0) for i in (0, 1, 2)
        )
        self.aux = aux

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)[1:]  # strides 8, 16, 32
        y = self.sppm(feats[2])
        decoded = []
        for fusion, low in zip(self.fusions, (feats[2], feats[1], feats[0]), strict=True):
            y = fusion(low, y)
            decoded.append(y)
        decoded.reverse()  # strides 8, 16, 32
        n_out = 3 if self.training and self.aux else 1
        return [resize_to(self.heads[i](decoded[i]), x) for i in range(n_out)]


@MODELS.register("pp_liteseg")
def pp_liteseg(
    num_classes: int,
    backbone: dict[str, Any] | None = None,
    decoder_channels: Sequence[int] = (64, 96, 128),
    sppm_inter_channels: int = 128,
    sppm_out_channels: int = 128,
    sppm_bins: Sequence[int] = (1, 2, 4),
    head_channels: int = 64,
    aux: bool = True,
) -> PPLiteSeg:
    """PP-LiteSeg; default backbone ResNet-18 at output stride 32."""
    net = build_backbone(backbone, {"type": "resnet18", "output_stride": 32})
    return PPLiteSeg(
        num_classes,
        net,
        decoder_channels,
        sppm_inter_channels,
        sppm_out_channels,
        sppm_bins,
        head_channels,
        aux,
    )


@MODELS.register("pp_liteseg_tiny")
def pp_liteseg_tiny(num_classes: int, backbone: dict[str, Any] | None = None) -> PPLiteSeg:
    net = build_backbone(backbone, {"type": "mobilenet_tiny", "output_stride": 32})
    return PPLiteSeg(
        num_classes,
        net,
        decoder_channels=(8, 12, 16),
        sppm_inter_channels=16,
        sppm_out_channels=16,
        head_channels=8,
    )
