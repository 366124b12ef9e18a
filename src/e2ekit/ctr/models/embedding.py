"""Hashed per-slot embeddings for CTR models.

All slots share ONE table; slot ``s`` owns its own range of rows (``layout.offsets``; with one
hash size for all: ``[s * hash_size, (s + 1) * hash_size)``), so the same bucket in two slots
never collides and one
sparse-gradient parameter covers every slot (what SparseAdam / sparse Adagrad and parameter
servers want). Bucket 0 of each slot is the reader's "missing" id and gets its own learned row.
"""

from __future__ import annotations

import torch
from torch import nn

from e2ekit.ctr.models.layout import FeatureLayout

__all__ = ["SlotEmbedding", "SlotLinear", "sparse_parameters"]


class SlotEmbedding(nn.Module):
    """``(B, num_slots)`` int64 ids in ``[0, hash_size)`` -> ``(B, num_slots, dim)`` vectors.

    ``sparse=True`` makes ``weight.grad`` a sparse tensor holding only the looked-up rows (a
    Criteo table is millions of rows; dense grads would cost a full table per step). Init is
    normal with ``init_std=1e-4`` as in DeepCTR, so untrained interactions start near zero.
    """

    def __init__(
        self,
        hash_size: int | None = None,
        dim: int = 8,
        num_slots: int = 26,
        sparse: bool = True,
        init_std: float = 1e-4,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__()
        if layout is None:
            if hash_size is None:
                raise ValueError("SlotEmbedding needs hash_size (one for every slot) or a layout")
            layout = FeatureLayout(0, (hash_size,) * num_slots, tuple(range(num_slots)))
        self.layout = layout
        self.num_slots, self.hash_size, self.dim = layout.num_slots, layout.uniform_hash, dim
        self.embedding = nn.Embedding(layout.num_rows, dim, sparse=sparse)
        nn.init.normal_(self.embedding.weight, std=init_std)
        # (num_slots,) row offset of each slot in the shared table.
        self.register_buffer("offsets", torch.from_numpy(layout.offsets), persistent=False)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` buckets -> ``(B, S)`` global table rows."""
        return ids + self.offsets

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # (B, S) + (S,) -> (B, S) global rows -> (B, S, D)
        return self.embedding(self.rows(ids))


class SlotLinear(SlotEmbedding):
    """First-order term: one scalar weight per (slot, bucket), summed over slots -> ``(B,)``."""

    def __init__(
        self, hash_size: int, num_slots: int = 26, sparse: bool = True, init_std: float = 1e-4
    ) -> None:
        super().__init__(hash_size, 1, num_slots=num_slots, sparse=sparse, init_std=init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # (B, S, 1) -> (B,)
        return super().forward(ids).sum(dim=(1, 2))


def sparse_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``model`` parameters into (sparse-grad embedding tables, the rest).

    The first list goes to ``torch.optim.SparseAdam`` (or sparse Adagrad / SGD), the second to
    a dense optimiser such as Adam.
    """
    sparse_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
            sparse_ids.add(id(module.weight))
    sparse, dense = [], []
    for p in model.parameters():
        (sparse if id(p) in sparse_ids else dense).append(p)
    return sparse, dense
