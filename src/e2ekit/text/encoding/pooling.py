"""Token vectors -> one sentence vector, and the defaults a sentence-transformers folder sets.

Pooling runs outside the ONNX graph, so one export serves every pooling mode; numpy for
onnxruntime outputs, torch (on the model's device) for the torch backend. Both compute in
float32 and ignore padded positions, so a sentence's vector does not depend on its batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "POOLINGS",
    "folder_max_length",
    "folder_normalize",
    "folder_pooling",
    "pool_numpy",
    "pool_torch",
    "pooled_dim",
]

POOLINGS = ("cls", "mean", "max", "mean_max")
POOLING_FILE = "1_Pooling/config.json"
MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
# sentence-transformers' pooling flags -> ours, in the order its Pooling module concatenates.
ST_MODES = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
)


def pooled_dim(hidden: int, pooling: str) -> int:
    return 2 * hidden if pooling == "mean_max" else hidden


def pool_numpy(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """(B, L, H) hidden states and (B, L) attention mask -> (B, H) or (B, 2H) float32."""
    hidden = hidden.astype(np.float32, copy=False)
    if pooling == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    keep = mask.astype(bool)[..., None]
    parts = []
    if pooling in ("mean", "mean_max"):
        m = keep.astype(np.float32)
        parts.append((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9))
    if pooling in ("max", "mean_max"):
        parts.append(np.where(keep, hidden, np.float32(-1e9)).max(axis=1))
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def pool_torch(hidden: Any, mask: Any, pooling: str) -> Any:
    """:func:`pool_numpy` on torch tensors, on their device (float32 even under autocast)."""
    import torch

    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    keep = mask.bool().unsqueeze(-1)
    parts = []
    if pooling in ("mean", "mean_max"):
        m = keep.float()
        parts.append((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9))
    if pooling in ("max", "mean_max"):
        parts.append(hidden.masked_fill(~keep, -1e9).amax(dim=1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _read_json(path: Path) -> Any:
    from e2ekit.core.errors import ConfigError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc})") from None


def folder_pooling(folder: Path) -> str:
    """The pooling a sentence-transformers folder was trained with (``1_Pooling``), else mean.

    A mode we do not implement (``mean_sqrt_len``, weighted, last token) is refused rather
    than silently replaced, since the vectors would no longer match the model's training.
    """
    from e2ekit.core.errors import ConfigError

    path = folder / POOLING_FILE
    if not path.is_file():
        return "mean"
    cfg = _read_json(path)
    modes = [ours for key, ours in ST_MODES if cfg.get(key)]
    other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    other = [k for k in other if k not in dict(ST_MODES)]
    if other or modes not in (["cls"], ["mean"], ["max"], ["mean", "max"]):
        raise ConfigError(
            f"{path}: pooling {other or modes} is not supported; pass pooling= one of "
            f"{', '.join(POOLINGS)}"
        )
    return "mean_max" if modes == ["mean", "max"] else modes[0]


def folder_normalize(folder: Path) -> bool:
    """Whether the folder's ``modules.json`` ends its pipeline with a Normalize module."""
    path = folder / MODULES_FILE
    if not path.is_file():
        return False
    modules = _read_json(path)
    return isinstance(modules, list) and any(
        isinstance(m, dict) and m.get("type") == NORMALIZE_MODULE for m in modules
    )


def folder_max_length(folder: Path) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder: the length it was trained at."""
    path = folder / ST_CONFIG_FILE
    if not path.is_file():
        return None
    value = _read_json(path).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None
