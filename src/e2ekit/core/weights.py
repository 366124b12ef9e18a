"""Local pretrained weights: read any common checkpoint wrapper, load non-strictly.

Weights are only ever read from a local file (never downloaded). Checkpoints come in many
wrappers (``{"state_dict": ...}``, ``{"model": ...}``, DDP's ``module.`` prefix); they are
unwrapped here so an official torchvision file loads with zero missing keys into modules that
keep torchvision's names. Loading is non-strict (classifier heads are not part of a backbone);
shape-mismatched tensors are skipped rather than crashing, and every count is logged. Shared by
the seg and det backbones and detectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2ekit.core.errors import ConfigError

__all__ = ["load_pretrained", "read_state_dict"]

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


def read_state_dict(path: str | Path, strip_prefixes: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint, unwrapped (and shared prefixes stripped).

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
    state = _unwrap(raw, file)
    return _strip_prefixes(state) if strip_prefixes else state


def load_pretrained(module: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load ``path`` into ``module`` non-strictly; returns (missing, unexpected) key lists.

    Raises:
        ConfigError: the file does not exist, cannot be read, or holds no tensors.
    """
    file = Path(path).expanduser()
    state = read_state_dict(file)
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
