"""Seg's component registries: the names seg configs use in ``type:`` keys.

Builders register here when their module is imported (``e2ekit.seg.task`` imports them
all); another kit's registries never see these names, so no prefixes are needed.
"""

from __future__ import annotations

from typing import Any

from e2ekit.core.registry import Registry

__all__ = ["BACKBONES", "DATASETS", "LOSSES", "METRICS", "MODELS", "TRANSFORMS"]

MODELS: Registry[Any] = Registry("model", kit="seg")
BACKBONES: Registry[Any] = Registry("backbone", kit="seg")
LOSSES: Registry[Any] = Registry("loss", kit="seg")
DATASETS: Registry[Any] = Registry("dataset", kit="seg")
TRANSFORMS: Registry[Any] = Registry("transform", kit="seg")
METRICS: Registry[Any] = Registry("metric", kit="seg")
