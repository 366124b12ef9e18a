"""Det's component registries: the names det configs use in ``type:`` keys.

Detectors and backbones register when their modules are imported (``e2ekit.det.task``
imports them); transforms take PaddleDetection's names (``RandomFlip``, ``PadBatch``).
Another kit's registries never see these names, so no prefixes are needed.
"""

from __future__ import annotations

from typing import Any

from e2ekit.core.registry import Registry

__all__ = ["BACKBONES", "BATCH_TRANSFORMS", "MODELS", "TRANSFORMS"]

MODELS: Registry[Any] = Registry("model", kit="det")
BACKBONES: Registry[Any] = Registry("backbone", kit="det")
#: Per-sample transforms (``sample -> sample``).
TRANSFORMS: Registry[Any] = Registry("transform", kit="det")
#: Per-batch transforms (``list[sample] -> list[sample]``), run inside the collate function.
BATCH_TRANSFORMS: Registry[Any] = Registry("batch transform", kit="det")
