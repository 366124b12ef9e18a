"""Where a batch's sparse ids live in the slot table, and which model field each slot feeds.

A reader turns a row into ``dense (B, num_dense)`` and ``sparse (B, num_slots)`` ids. Every
slot has its own hash range in the ONE shared table (``offsets``: slot ``s`` owns rows
``[offsets[s], offsets[s] + slot_hash[s])``); a single-valued field is one slot, a
multi-valued field (tags, a click history) is ``max_len`` consecutive slots that pool into one
field vector, and a declared cross is one more slot. Models see fields, never slots, so the
dense head (what ONNX export holds) is the same whatever the reader had to pad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CRITEO_DENSE", "CRITEO_SLOTS", "FeatureLayout"]

CRITEO_DENSE = 13
CRITEO_SLOTS = 26


@dataclass(frozen=True)
class FeatureLayout:
    """Slots (hash range each) grouped into fields; ``field_dims`` (optional) per field.

    ``slot_field`` is non-decreasing: a field's slots are consecutive. Bucket 0 of a slot is
    "missing"; a multi-valued field averages the rows of its present values and falls back
    to its first slot's "missing" row when it has none.
    """

    num_dense: int
    slot_hash: tuple[int, ...]
    slot_field: tuple[int, ...]
    field_names: tuple[str, ...] = ()
    field_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.slot_hash) != len(self.slot_field) or not self.slot_hash:
            raise ValueError("a layout needs one hash size and one field index per slot")
        if any(h < 2 for h in self.slot_hash):
            raise ValueError("hash sizes must be >= 2 (bucket 0 is reserved for missing)")
        fields = np.asarray(self.slot_field)
        steps = np.diff(fields)
        if fields[0] != 0 or np.any((steps != 0) & (steps != 1)):
            raise ValueError(
                "slot_field must number fields 0, 1, 2, ... with a field's slots together"
            )
        if self.field_dims is not None and len(self.field_dims) != self.num_fields:
            raise ValueError("field_dims needs one dim per field")

    # -- sizes ------------------------------------------------------------------------------
    @classmethod
    def criteo(cls, hash_size: int) -> FeatureLayout:
        """Criteo's 13 dense features and 26 single-valued slots, ``hash_size`` buckets each."""
        return cls(
            num_dense=CRITEO_DENSE,
            slot_hash=(hash_size,) * CRITEO_SLOTS,
            slot_field=tuple(range(CRITEO_SLOTS)),
            field_names=tuple(f"C{i}" for i in range(1, CRITEO_SLOTS + 1)),
        )

    @property
    def num_slots(self) -> int:
        return len(self.slot_hash)

    @property
    def num_fields(self) -> int:
        return self.slot_field[-1] + 1

    @property
    def pooled(self) -> bool:
        """Whether some field spans several slots (otherwise pooling is the identity)."""
        return self.num_fields != self.num_slots

    @property
    def num_rows(self) -> int:
        return int(sum(self.slot_hash))

    @property
    def offsets(self) -> np.ndarray:
        """``(num_slots,)`` int64 first table row of each slot."""
        return np.concatenate([[0], np.cumsum(self.slot_hash[:-1])]).astype(np.int64)

    @property
    def uniform_hash(self) -> int | None:
        """The one hash size every slot has, or None."""
        return self.slot_hash[0] if len(set(self.slot_hash)) == 1 else None

    # -- ids -> rows -> fields --------------------------------------------------------------
    def rows(self, ids: np.ndarray) -> np.ndarray:
        """``(B, num_slots)`` buckets -> global table rows (what a KV store is keyed by)."""
        return ids.astype(np.int64) + self.offsets

    def pool(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Slot rows ``(B, S, W)`` -> field vectors ``(B, F, W)`` (identity without
        multi-valued fields); a field's present values are averaged."""
        if not self.pooled:
            return emb
        n, _, width = emb.shape
        field = torch.as_tensor(self.slot_field, device=emb.device)
        weight = (ids != 0).to(emb.dtype)
        count = emb.new_zeros(n, self.num_fields).index_add_(1, field, weight)
        first = torch.as_tensor(self._first_slots, device=emb.device)
        # a field with no present value reads its first slot (bucket 0: the "missing" row)
        weight[:, first] += (count == 0).to(emb.dtype)
        weight = weight / count.clamp(min=1.0).index_select(1, field)
        out = emb.new_zeros(n, self.num_fields, width)
        return out.index_add_(1, field, emb * weight.unsqueeze(2))

    @property
    def _first_slots(self) -> list[int]:
        return [int(s) for s in np.flatnonzero(np.diff(self.slot_field, prepend=-1))]

    # -- manifest ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_dense": self.num_dense,
            "slot_hash": list(self.slot_hash),
            "slot_field": list(self.slot_field),
            "field_names": list(self.field_names),
            "field_dims": None if self.field_dims is None else list(self.field_dims),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLayout:
        dims = data.get("field_dims")
        return cls(
            num_dense=int(data["num_dense"]),
            slot_hash=tuple(int(h) for h in data["slot_hash"]),
            slot_field=tuple(int(f) for f in data["slot_field"]),
            field_names=tuple(data.get("field_names") or ()),
            field_dims=None if dims is None else tuple(int(d) for d in dims),
        )
