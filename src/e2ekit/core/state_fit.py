"""Strict ``load_state_dict`` whose failure names the keys and shapes that do not fit.

torch's own message starts with "Error(s) in loading state_dict for Model:" and lists the
keys on later lines, which a one-line error drops; this names the first few instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from e2ekit.core.errors import CheckpointError

SHOWN = 3  # keys named per kind; the rest are counted


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _shape(value: Any) -> list[int] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else list(shape)


def state_mismatch(module: nn.Module, state: Mapping[str, Any]) -> str:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``module``,
    the first few of each ("" when the names and shapes all agree)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {_shape(state[k])} in the checkpoint, {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and _shape(state[k]) is not None and _shape(state[k]) != list(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_first(unexpected)}")
    if shapes:
        more = f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"shape mismatch: {shapes[0]}{more}")
    return "; ".join(parts)


def load_state_strict(module: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``module.load_state_dict(state)`` (strict); a misfit is a one-line ``CheckpointError``
    starting with ``source`` and naming the keys."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        why = state_mismatch(module, state) or str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{source} does not fit this model config: {why}") from None
