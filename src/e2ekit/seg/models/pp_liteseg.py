"""PP-LiteSeg (Peng et al., "PP-LiteSeg: A Superior Real-Time Semantic Segmentation Model",
2022).

Encoder maps at strides 8/16/32 feed a Flexible and Lightweight Decoder (FLD) whose channels
shrink as resolution grows (``decoder_channels`` for 1/8, 1/16, 1/32). Four channel counts
(1/4, 1/8, 1/16, 1/32) add one more fusion with the stride-4 encoder map, so the main head
predicts at 1/4 instead of 1/8: structures a few pixels wide (membranes, vessels, cracks) survive
the decoder, for about a third more compute at the finest level. The stride-32 map goes
through the Simple Pyramid Pooling Module (SPPM: summed pooled branches, one 3x3 conv), then
Unified Attention Fusion Modules (UAFM, spatial attention) merge each coarser decoder output into
the next finer encoder map. The paper's STDC encoder is replaced by any ``BACKBONES`` entry
(default ResNet-18, output stride 32). In training, heads on the 1/16 and 1/32 decoder outputs
give auxiliary logits: ``[main, aux_1/16, aux_1/32]`` (with the stride-4 level, ``[main,
aux_1/8, aux_1/16, aux_1/32]``).

``detail_channels > 0`` adds a detail branch in the spirit of BiSeNet's spatial path: two
3x3 convs on the image at stride 2 (no backbone in between, so edges stay sharp), fused with the
finest decoder output by one more UAFM; the main head then predicts at 1/2 and the former main
head becomes an auxiliary one. Boundaries a few pixels wide (EM membranes, cracks) are placed
by the stride-2 features instead of a 4x or 8x bilinear upsampling of coarse logits.

``image_norm=True`` standardises each image's channels (zero mean, unit variance per image
and channel, no learned scale) before everything else, inside the network: a gray-world white
balance plus contrast normalisation, so a model trained under one light (dusk, a dim
microscope) still reads images taken under another. Being part of the graph, it travels with
the exported model; sliding-window inference standardises each window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.seg.models.layers import (
    SPPM,
    UAFM,
    ConvBNReLU,
    ImageStandardize,
    SegHead,
    build_backbone,
    resize_to,
)
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
        detail_channels: int = 0,
        image_norm: bool = False,
    ) -> None:
        super().__init__()
        self.image_norm = ImageStandardize() if image_norm else None
        if len(decoder_channels) not in (3, 4):
            raise ValueError(
                "decoder_channels takes 3 channel counts (strides 8, 16, 32) or 4 (strides 4, 8,"
                f" 16, 32), got {list(decoder_channels)}"
            )
        self.backbone = backbone
        levels = len(decoder_channels)
        self.first = 4 - levels  # index of the finest backbone map used (strides 4, 8, 16, 32)
        enc = list(backbone.out_channels[self.first :])
        self.sppm = SPPM(enc[-1], sppm_inter_channels, sppm_out_channels, sppm_bins)
        # Coarse to fine: the coarsest level fuses the SPPM output, each finer one the previous
        # UAFM output.
        order = range(levels - 1, -1, -1)
        high = {i: decoder_channels[i + 1] if i + 1 < levels else sppm_out_channels for i in order}
        self.fusions = nn.ModuleList(UAFM(enc[i], high[i], decoder_channels[i]) for i in order)
        self.heads = nn.ModuleList(
            SegHead(c, head_channels, num_classes, dropout=0.0) for c in decoder_channels
        )
        self.detail: nn.Module | None = None
        if detail_channels > 0:
            d = detail_channels
            self.detail = nn.Sequential(ConvBNReLU(3, d, 3, stride=2), ConvBNReLU(d, d, 3))
            self.detail_fusion = UAFM(d, decoder_channels[0], d)
            self.heads.insert(0, SegHead(d, head_channels, num_classes, dropout=0.0))
        self.aux = aux

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.image_norm is not None:
            x = self.image_norm(x)
        feats = self.backbone(x)[self.first :]  # finest first
        y = self.sppm(feats[-1])
        decoded = []
        for fusion, low in zip(self.fusions, reversed(feats), strict=True):
            y = fusion(low, y)
            decoded.append(y)
        decoded.reverse()  # finest first
        if self.detail is not None:
            decoded.insert(0, self.detail_fusion(self.detail(x), decoded[0]))
        n_out = len(decoded) if self.training and self.aux else 1
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
    detail_channels: int = 0,
    image_norm: bool = False,
) -> PPLiteSeg:
    """PP-LiteSeg; default backbone ResNet-18 at output stride 32; four ``decoder_channels``
    decode down to stride 4; ``detail_channels`` adds a stride-2 detail branch;
    ``image_norm`` standardises each input image (robust to lighting)."""
    if len(decoder_channels) not in (3, 4):
        raise ConfigError(
            "config key 'model.decoder_channels': give 3 channel counts (decoder at strides 8,"
            " 16, 32) or 4 (strides 4, 8, 16, 32, for thin structures), e.g. [32, 48, 64];"
            f" got {list(decoder_channels)}"
        )
    if detail_channels < 0:
        raise ConfigError(
            "config key 'model.detail_channels': give 0 (no detail branch) or a channel count"
            f" such as 16; got {detail_channels}"
        )
    if not isinstance(image_norm, bool):
        raise ConfigError(f"config key 'model.image_norm': give true or false; got {image_norm!r}")
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
        detail_channels,
        image_norm,
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
