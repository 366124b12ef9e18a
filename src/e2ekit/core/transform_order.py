"""Shared check for the vision kits' transform lists: pixel-level ops must precede Normalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from e2ekit.core.errors import ConfigError


def check_uint8_order(transforms: Sequence[Any], normalize: type, flag: str) -> None:
    """Raise ConfigError when a transform marked ``flag`` (works on uint8 pixels) comes after
    the first ``normalize`` instance, or when an entry is not callable."""
    normalized_at = None
    for i, t in enumerate(transforms):
        if not callable(t):
            raise ConfigError(f"transforms[{i}] is not callable: {t!r}")
        if isinstance(t, normalize) and normalized_at is None:
            normalized_at = i
        elif getattr(t, flag, False) and normalized_at is not None:
            raise ConfigError(
                f"transforms[{i}] {type(t).__name__} works on uint8 pixels; "
                f"move it before Normalize (transforms[{normalized_at}])"
            )
