"""CTR models that learn WHICH field pairs interact: FwFM and AutoInt.

FM, DeepFM and DCN weigh every field pair alike (or leave pair selection to an MLP); when
clicks hinge on one pair of fields these two learn the pair's importance explicitly: FwFM with
one scalar per field pair, AutoInt with attention between field embeddings. Both follow the
zoo's contract (one slot table, a dense ``head`` that ONNX export holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2ekit.ctr.models.layout import FeatureLayout
from e2ekit.ctr.models.zoo import (
    DEFAULT_MLP,
    MLP,
    TINY_DIM,
    TINY_MLP,
    CtrModel,
    _Fields,
    _FirstOrder,
)
from e2ekit.ctr.registry import MODELS

__all__ = ["AutoInt", "FwFM", "InteractingLayer", "fwfm_interaction"]


def fwfm_interaction(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """FwFM second-order term ``sum_{i<j} r_ij <v_i, v_j>`` for ``v (B, F, D)`` -> ``(B,)``.

    Pan et al., "Field-weighted Factorization Machines", WWW 2018, eq. 3, with one field per
    feature (one id per slot). ``r (F, F)`` is read above its diagonal only.
    """
    gram = torch.bmm(v, v.transpose(1, 2))  # (B, F, D) @ (B, D, F) -> (B, F, F)
    return (gram * torch.triu(r, diagonal=1)).sum(dim=(1, 2))  # (B,)


class FwFM(CtrModel):
    """Field-weighted FM: LR + pairwise ``r_{F(i),F(j)} <v_i, v_j>`` over the 39 fields.

    ``r`` starts at 1 (plain FM) and learns how much each field pair matters, with
    ``F(F-1)/2`` extra parameters instead of FFM's ``F`` vectors per feature.
    """

    first_order = True
    same_dims = True

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        self.linear = _FirstOrder(self.num_dense)
        self.fields = _Fields(self.embed_dim, self.num_dense)
        n = self.num_fields + self.num_dense
        self.pair_weight = nn.Parameter(torch.ones(n, n))

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        v = self.fields(dense, emb[:, :, 1:])  # (B, 39, D)
        return self.linear(dense, emb) + fwfm_interaction(v, self.pair_weight)


class InteractingLayer(nn.Module):
    """AutoInt interacting layer (Song et al., CIKM 2019, eqs. 5-8): multi-head self-attention
    across fields, a residual projection, ReLU. ``(B, F, in_dim) -> (B, F, heads * head_dim)``.

    Scores are scaled by ``head_dim ** -0.5`` (as in Transformers and DeepCTR's default).
    """

    def __init__(self, in_dim: int, head_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        out_dim = head_dim * num_heads
        # W_Query, W_Key, W_Value and W_Res as one matmul (tiny per-field GEMMs are slow on CPU)
        self.project = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = out_dim

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        return x.reshape(b, f, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, F, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, res = self.project(x).chunk(4, dim=-1)  # 4 x (B, F, H * d)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = q @ k.transpose(2, 3) * self.head_dim**-0.5  # (B, H, F, F)
        att = self.dropout(torch.softmax(scores, dim=-1)) @ v  # (B, H, F, d)
        att = att.transpose(1, 2).flatten(2)  # (B, F, H * d)
        return torch.relu(att + res)


class AutoInt(CtrModel):
    """AutoInt (Song et al. 2019): ``num_layers`` interacting layers over the 39 field vectors,
    flattened to one linear logit; with ``mlp_dims`` an MLP on the same field vectors runs in
    parallel (AutoInt+) and both feed that logit. A first-order LR term is added, as in
    DeepCTR's AutoInt (``mlp_dims=[]``: the attention part and LR only).
    """

    first_order = True
    same_dims = True

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        num_layers: int = 3,
        dropout: float = 0.0,
        num_heads: int = 2,
        head_dim: int = 8,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        self.linear = _FirstOrder(self.num_dense)
        self.fields = _Fields(self.embed_dim, self.num_dense)
        layers, width = [], self.embed_dim
        for _ in range(num_layers):
            layers.append(InteractingLayer(width, head_dim, num_heads, dropout))
            width = layers[-1].out_dim
        self.attention = nn.ModuleList(layers)
        n = self.num_fields + self.num_dense
        self.mlp = MLP(n * self.embed_dim, mlp_dims, dropout) if mlp_dims else None
        deep = self.mlp.out_dim if self.mlp is not None else 0
        self.out = nn.Linear(n * width + deep, 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        v = self.fields(dense, emb[:, :, 1:])  # (B, 39, D)
        x = v
        for layer in self.attention:
            x = layer(x)  # (B, 39, H * d)
        parts = [x.flatten(1)]
        if self.mlp is not None:
            parts.append(self.mlp(v.flatten(1)))  # (B, 39 * D) -> (B, h)
        return self.linear(dense, emb) + self.out(torch.cat(parts, dim=1)).squeeze(1)


# ---- registered builders; mlp_dims / num_layers / dropout are refused where unused ----


@MODELS.register("fwfm")
def fwfm(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> FwFM:
    return FwFM(hash_size, embed_dim, sparse, layout=layout)


@MODELS.register("fwfm_tiny")
def fwfm_tiny(
    hash_size: int = 64, sparse: bool = True, layout: FeatureLayout | None = None
) -> FwFM:
    return FwFM(hash_size, TINY_DIM, sparse, layout=layout)


@MODELS.register("autoint")
def autoint(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    num_layers: int = 3,
    dropout: float = 0.0,
    num_heads: int = 2,
    head_dim: int = 8,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> AutoInt:
    return AutoInt(
        hash_size,
        embed_dim,
        mlp_dims,
        num_layers,
        dropout,
        num_heads,
        head_dim,
        sparse,
        layout=layout,
    )


@MODELS.register("autoint_tiny")
def autoint_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> AutoInt:
    return AutoInt(hash_size, TINY_DIM, TINY_MLP, 2, dropout, 2, 2, sparse, layout=layout)
