"""Helpers shared by backbones: local weight loading, stride->dilation, the stage protocol.

Weights are only ever read from a local file (never downloaded).

Checkpoints come in many wrappers (``{"state_dict": ...}``, ``{"model": ...}``, DDP's
``module.`` prefix); they are unwrapped here so that an official torchvision file loads with
zero missing keys into the wrappers, which keep torchvision's module names. Loading is
non-strict because classifier heads (``fc.*``, ``classifier.*``) are not part of a backbone;
tensors whose shape does not match are skipped rather than crashing, and every count is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2ekit.core.errors import ConfigError

__all__ = ["StagedBackbone", "check_output_stride", "dilate_", "load_pretrained"]

log = logging.getLogger("e2ekit")

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net", "ema")
_PREFIXES = ("module.", "backbone.", "_orig_mod.")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside ``obj``: the first wrapper key holding one, else ``obj``."""
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ConfigError(f"pretrained file '{path}' does not hold a state dict of tensors")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix shared by every key (``module.``, ``backbone.``), repeatedly."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_pretrained(module: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load ``path`` into ``module`` non-strictly; returns (missing, unexpected) key lists.

    Raises:
        ConfigError: the file does not exist, cannot be read, or holds no tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"pretrained weights file not found: '{file}'")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean 'bad file'
        raise ConfigError(f"cannot read pretrained weights '{file}': {exc}") from exc
    state = _strip_prefixes(_unwrap(raw, file))
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        del state[key]
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    log.info(
        "loaded pretrained '%s' into %s: %d tensors, %d missing, %d unexpected, %d mismatched",
        file,
        type(module).__name__,
        len(state) - len(unexpected),
        len(missing),
        len(unexpected),
        len(mismatched),
    )
    if missing:
        log.warning("pretrained '%s': missing keys (first 5): %s", file.name, missing[:5])
    if mismatched:
        log.warning("pretrained '%s': shape-mismatched keys skipped: %s", file.name, mismatched[:5])
    return missing, unexpected


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
