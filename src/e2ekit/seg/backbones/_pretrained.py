"""Helpers shared by backbones: local weight loading, stride->dilation, the stage protocol.

Weights are only ever read from a local file (never downloaded), by
:func:`e2ekit.core.weights.load_backbone_weights`: checkpoint wrappers are unwrapped, timm
names are mapped to torchvision's (which the wrappers keep), classifier heads (``fc.*``,
``classifier.*``) are left out, and a file filling less than 90 % of the backbone's tensors
is refused with its load report. ``pretrained: imagenet`` reads the file cached by
``e2ekit weights import``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.core.weights import load_backbone_weights, load_pretrained

__all__ = [
    "StagedBackbone",
    "check_output_stride",
    "dilate_",
    "load_backbone_weights",
    "load_pretrained",
]

log = logging.getLogger("e2ekit")


def check_output_stride(output_stride: int) -> int:
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"backbone output_stride must be 8, 16 or 32, got {output_stride!r}")
    return output_stride


def dilate_(stage: nn.Module, dilation: int, previous_dilation: int) -> None:
    """Trade the stride of ``stage`` for dilation, in place, keeping every parameter name.

    Follows torchvision's ``replace_stride_with_dilation``: the conv that used to stride keeps
    ``previous_dilation``; every other spatial conv of the stage gets ``dilation``. Works for
    any conv stack (BasicBlock, which torchvision cannot dilate, and MobileNet blocks alike).
    """
    for m in stage.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        strided = m.stride != (1, 1)
        m.stride = (1, 1)
        k = m.kernel_size[0]
        if k > 1:
            d = previous_dilation if strided else dilation
            m.dilation = (d, d)
            m.padding = ((k - 1) // 2 * d, (k - 1) // 2 * d)


class StagedBackbone(nn.Module):
    """Base of the seg backbones: 4 stages, each ending at one of the returned feature maps.

    Subclasses implement :meth:`stage`; networks that run only part of the encoder (ICNet
    runs stages 0-1 and 2-3 on different image scales) call it directly.
    """

    out_channels: list[int]
    strides: list[int]  # stride of each returned map w.r.t. the input (dilation-aware)
    output_stride: int

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for i in range(4):
            x = self.stage(i, x)
            feats.append(x)
        return feats
