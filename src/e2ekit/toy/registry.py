"""Toy's model registry: the names toy configs use in ``model.type``."""

from __future__ import annotations

from typing import Any

from e2ekit.core.registry import Registry

__all__ = ["MODELS"]

MODELS: Registry[Any] = Registry("model", kit="toy")
