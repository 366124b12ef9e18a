"""CTR model zoo: LR, FM, DNN, Wide&Deep, DeepFM, DCN, DCN-V2.

Every model maps ``dense (B, 13) float32`` (log1p counts from the Criteo reader) and
``sparse (B, 26) int64`` (per-slot hashed ids, 0 = missing) to logits ``(B,)``; train with
``BCEWithLogitsLoss``. Embedding tables use sparse gradients by default (``sparse=True``), so
pair :func:`~e2ekit.ctr.models.embedding.sparse_parameters` with SparseAdam + Adam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2ekit.ctr.models.embedding import SlotEmbedding
from e2ekit.ctr.models.layout import CRITEO_DENSE, CRITEO_SLOTS, FeatureLayout
from e2ekit.ctr.registry import MODELS

__all__ = [
    "DCN",
    "DNN",
    "FM",
    "MLP",
    "CrossLayer",
    "CrossLayerV2",
    "CtrModel",
    "DCNv2",
    "DeepFM",
    "LogisticRegression",
    "WideDeep",
    "fm_interaction",
]

N_DENSE = CRITEO_DENSE  # the defaults; a schema's layout sets its own
N_SPARSE = CRITEO_SLOTS
DEFAULT_MLP = (400, 400, 400)  # ElasticCTR / PaddleRec ctr-dnn: 3 x 400 ReLU
TINY_DIM = 4  # tiny variants: fast tests, not for training
TINY_MLP = (16, 16)


class MLP(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` per hidden width, no output layer (``out_dim``: last)."""

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for width in dims:
            layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        super().__init__(*layers)
        self.out_dim = in_dim


def fm_interaction(v: torch.Tensor) -> torch.Tensor:
    """FM second-order term ``sum_{i<j} <v_i, v_j>`` for ``v (B, F, D)`` -> ``(B,)``.

    Rendle, "Factorization Machines", ICDM 2010, eq. 5 (the sum-square trick, O(F*D) not
    O(F^2*D)): ``0.5 * sum_d [(sum_i v_id)^2 - sum_i v_id^2]``. ``v_i`` is the field vector
    already scaled by its feature value ``x_i``.
    """
    square_of_sum = v.sum(dim=1).pow(2)  # (B, D)
    sum_of_square = v.pow(2).sum(dim=1)  # (B, D)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)  # (B,)


class CtrModel(nn.Module):
    """Base of the zoo: ONE slot table (``self.tables``) feeding a dense ``head``.

    The split is what makes CTR training fast and servable: the trainers look rows up and
    update them with a fused row-wise optimizer (never a sparse-tensor round trip), the dense
    head is what ONNX export holds, and the table is what the KV export writes. ``width`` is
    ``embed_dim`` plus one leading column for the first-order (LR) weight when the model has one.
    ``layout`` (default: Criteo's 13 dense + 26 slots of ``hash_size`` buckets) says how many
    dense features, slots and fields there are; with per-field dims a row is as wide as the
    widest field and narrower fields read its leading columns.
    """

    first_order: bool = False
    same_dims: bool = False  # models whose fields interact by dot products need one dim

    def __init__(
        self, hash_size: int, embed_dim: int, sparse: bool, layout: FeatureLayout | None = None
    ) -> None:
        super().__init__()
        self.layout = layout if layout is not None else FeatureLayout.criteo(hash_size)
        self.num_dense, self.num_fields = self.layout.num_dense, self.layout.num_fields
        self.field_dims = self._field_dims(embed_dim)
        if self.field_dims is not None:
            embed_dim = max(self.field_dims)
        self.hash_size, self.embed_dim = self.layout.uniform_hash, embed_dim
        self.width = embed_dim + int(self.first_order)
        self.tables = SlotEmbedding(dim=self.width, sparse=sparse, layout=self.layout)

    def _field_dims(self, embed_dim: int) -> tuple[int, ...] | None:
        """Per-field dims when they differ (0 in the layout = the model's ``embed_dim``)."""
        if self.layout.field_dims is None or embed_dim == 0:
            return None
        dims = tuple(d or embed_dim for d in self.layout.field_dims)
        if len(set(dims)) == 1:
            return None if dims[0] == embed_dim else dims
        if self.same_dims:
            raise ValueError(
                f"{type(self).__name__} takes dot products between field vectors, so every "
                f"field needs the same embed_dim (the schema gives {sorted(set(dims))}); drop "
                "the per-column embed_dim or use dnn, wide_deep, dcn or dcn_v2"
            )
        return dims

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.head(dense, self.pool(self.tables(sparse), sparse))

    def rows(self, sparse: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` slot buckets -> ``(B, S)`` global table rows (the keys a store holds)."""
        return self.tables.rows(sparse)

    def pool(self, emb: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Looked-up slot rows ``(B, S, width)`` -> field vectors ``(B, F, width)``."""
        return self.layout.pool(emb, sparse)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` from ``dense (B, num_dense)`` and field rows ``emb (B, F, width)``."""
        raise NotImplementedError

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything but the slot table (what the dense optimizer and DDP all-reduce own)."""
        table = self.tables.embedding.weight
        return [p for p in self.parameters() if p is not table]

    def deep_input(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Field vectors (each at its own dim) flattened next to the raw dense features."""
        if self.field_dims is None:
            flat = emb.flatten(1)
        else:
            flat = torch.cat([emb[:, f, :d] for f, d in enumerate(self.field_dims)], dim=1)
        return torch.cat([flat, dense], dim=1)

    def deep_dim(self) -> int:
        """Width of :meth:`deep_input`."""
        fields = sum(self.field_dims) if self.field_dims else self.num_fields * self.embed_dim
        return fields + self.num_dense


class _FirstOrder(nn.Module):
    """``w0 + sum_fields w[field, id] + <w_dense, dense>``: logistic regression on all
    features; the slot weights are column 0 of the model's table."""

    def __init__(self, num_dense: int = CRITEO_DENSE) -> None:
        super().__init__()
        self.dense_linear = nn.Linear(num_dense, 1)  # its bias is the global w0

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # (B, F) summed -> (B,) + (B, 1) -> (B,)
        return emb[:, :, 0].sum(dim=1) + self.dense_linear(dense).squeeze(1)


class _Fields(nn.Module):
    """All fields as vectors ``(B, F + num_dense, D)``: slot embeddings, then ``x_i * v_i``
    per dense feature (the FM view of real-valued features, as in PaddleRec's Criteo
    FM/DeepFM)."""

    def __init__(self, embed_dim: int, num_dense: int = CRITEO_DENSE) -> None:
        super().__init__()
        self.dense_vectors = nn.Parameter(torch.randn(num_dense, embed_dim) * 1e-4)

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        dense_emb = dense.unsqueeze(2) * self.dense_vectors  # (B, n, 1) * (n, D) -> (B, n, D)
        return torch.cat([emb, dense_emb], dim=1)  # (B, F + n, D)


class LogisticRegression(CtrModel):
    """LR on hashed one-hot slots + dense features: the classic CTR baseline."""

    first_order = True

    def __init__(
        self, hash_size: int, sparse: bool = True, layout: FeatureLayout | None = None
    ) -> None:
        super().__init__(hash_size, 0, sparse, layout)
        self.linear = _FirstOrder(self.num_dense)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(dense, emb)


class FM(CtrModel):
    """Factorization Machine (Rendle 2010): LR + pairwise ``<v_i, v_j> x_i x_j`` over 39 fields."""

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

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(dense, emb) + fm_interaction(self.fields(dense, emb[:, :, 1:]))


class DNN(CtrModel):
    """ElasticCTR / PaddleRec ctr-dnn: per-slot sum-pooled embeddings (one id per slot here, so
    pooling is the lookup) concatenated with dense features -> MLP -> 1 logit."""

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 10,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        dropout: float = 0.0,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        self.mlp = MLP(self.deep_dim(), mlp_dims, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(self.deep_input(dense, emb))).squeeze(1)  # (B, 1) -> (B,)


class WideDeep(CtrModel):
    """Wide & Deep (Cheng et al., DLRS 2016): ``sigmoid(wide LR + deep MLP)``, trained jointly.

    The wide part is LR over the hashed slots and dense features (no hand-made crosses here:
    hashing already gives one id per slot value); wide weights and deep vectors share a row.
    """

    first_order = True

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        dropout: float = 0.0,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        self.wide = _FirstOrder(self.num_dense)
        self.mlp = MLP(self.deep_dim(), mlp_dims, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        deep = self.out(self.mlp(self.deep_input(dense, emb[:, :, 1:]))).squeeze(1)
        return self.wide(dense, emb) + deep


class DeepFM(CtrModel):
    """DeepFM (Guo et al., IJCAI 2017): ``y = y_FM + y_DNN`` with the FM and the MLP SHARING the
    field embeddings (no pre-training, unlike FNN); the MLP reads all 39 field vectors."""

    first_order = True
    same_dims = True

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        dropout: float = 0.0,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        self.linear = _FirstOrder(self.num_dense)
        self.fields = _Fields(self.embed_dim, self.num_dense)
        self.mlp = MLP((self.num_fields + self.num_dense) * self.embed_dim, mlp_dims, dropout)
        self.out = nn.Linear(self.mlp.out_dim, 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        v = self.fields(dense, emb[:, :, 1:])  # (B, 39, D)
        deep = self.out(self.mlp(v.flatten(1))).squeeze(1)  # (B, 39 * D) -> (B, 1) -> (B,)
        return self.linear(dense, emb) + fm_interaction(v) + deep


class CrossLayer(nn.Module):
    """DCN cross layer (Wang et al., ADKDD 2017, eq. 3): ``x_{l+1} = x0 (x_l . w) + b + x_l``.

    ``x0 x_l^T w`` is computed as ``x0 * (x_l . w)``: O(d) per layer, never the d x d outer
    product.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.weight, std=dim**-0.5)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        xw = x @ self.weight  # (B, d) @ (d,) -> (B,)
        return x0 * xw.unsqueeze(1) + self.bias + x  # (B, d) * (B, 1) -> (B, d)


class CrossLayerV2(nn.Module):
    """DCN-V2 cross layer (Wang et al., WWW 2021, eq. 1): ``x_{l+1} = x0 ⊙ (W x_l + b) + x_l``
    with a full-rank ``W (d, d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x  # (B, d)


class DCN(CtrModel):
    """Deep & Cross Network (Wang et al. 2017): cross network and MLP run in PARALLEL on
    ``x0 = [embeddings, dense]``; ``[x_L, h_L]`` -> one linear logit."""

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        num_layers: int = 3,
        dropout: float = 0.0,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        d = self.deep_dim()
        self.cross = nn.ModuleList(CrossLayer(d) for _ in range(num_layers))
        self.mlp = MLP(d, mlp_dims, dropout)
        self.out = nn.Linear(d + self.mlp.out_dim, 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x0 = self.deep_input(dense, emb)  # (B, d)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        both = torch.cat([x, self.mlp(x0)], dim=1)  # (B, d + h)
        return self.out(both).squeeze(1)  # (B, 1) -> (B,)


class DCNv2(CtrModel):
    """DCN-V2 (Wang et al. 2021), stacked structure: full-rank cross layers, then the MLP on
    their output, then a linear logit (``parallel=True`` gives the paper's parallel variant)."""

    def __init__(
        self,
        hash_size: int,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = DEFAULT_MLP,
        num_layers: int = 3,
        dropout: float = 0.0,
        parallel: bool = False,
        sparse: bool = True,
        layout: FeatureLayout | None = None,
    ) -> None:
        super().__init__(hash_size, embed_dim, sparse, layout)
        d = self.deep_dim()
        self.parallel = parallel
        self.cross = nn.ModuleList(CrossLayerV2(d) for _ in range(num_layers))
        self.mlp = MLP(d, mlp_dims, dropout)
        self.out = nn.Linear(self.mlp.out_dim + (d if parallel else 0), 1)

    def head(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x0 = self.deep_input(dense, emb)  # (B, d)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        # parallel: (B, d + h); stacked: (B, h)
        out = torch.cat([x, self.mlp(x0)], dim=1) if self.parallel else self.mlp(x)
        return self.out(out).squeeze(1)  # (B, 1) -> (B,)


# ---- registered builders (``type: deepfm`` in configs); each has a ``*_tiny`` test variant ----


@MODELS.register("lr")
def lr(
    hash_size: int = 2**20, sparse: bool = True, layout: FeatureLayout | None = None
) -> LogisticRegression:
    return LogisticRegression(hash_size, sparse, layout=layout)


@MODELS.register("lr_tiny")
def lr_tiny(
    hash_size: int = 64, sparse: bool = True, layout: FeatureLayout | None = None
) -> LogisticRegression:
    return LogisticRegression(hash_size, sparse, layout=layout)


@MODELS.register("fm")
def fm(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> FM:
    return FM(hash_size, embed_dim, sparse, layout=layout)


@MODELS.register("fm_tiny")
def fm_tiny(hash_size: int = 64, sparse: bool = True, layout: FeatureLayout | None = None) -> FM:
    return FM(hash_size, TINY_DIM, sparse, layout=layout)


@MODELS.register("dnn")
def dnn(
    hash_size: int = 2**20,
    embed_dim: int = 10,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DNN:
    return DNN(hash_size, embed_dim, mlp_dims, dropout, sparse, layout=layout)


@MODELS.register("dnn_tiny")
def dnn_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DNN:
    return DNN(hash_size, TINY_DIM, TINY_MLP, dropout, sparse, layout=layout)


@MODELS.register("wide_deep")
def wide_deep(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> WideDeep:
    return WideDeep(hash_size, embed_dim, mlp_dims, dropout, sparse, layout=layout)


@MODELS.register("wide_deep_tiny")
def wide_deep_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> WideDeep:
    return WideDeep(hash_size, TINY_DIM, TINY_MLP, dropout, sparse, layout=layout)


@MODELS.register("deepfm")
def deepfm(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DeepFM:
    return DeepFM(hash_size, embed_dim, mlp_dims, dropout, sparse, layout=layout)


@MODELS.register("deepfm_tiny")
def deepfm_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DeepFM:
    return DeepFM(hash_size, TINY_DIM, TINY_MLP, dropout, sparse, layout=layout)


@MODELS.register("dcn")
def dcn(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    num_layers: int = 3,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DCN:
    return DCN(hash_size, embed_dim, mlp_dims, num_layers, dropout, sparse, layout=layout)


@MODELS.register("dcn_tiny")
def dcn_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DCN:
    return DCN(hash_size, TINY_DIM, TINY_MLP, 2, dropout, sparse, layout=layout)


@MODELS.register("dcn_v2")
def dcn_v2(
    hash_size: int = 2**20,
    embed_dim: int = 16,
    mlp_dims: Sequence[int] = DEFAULT_MLP,
    num_layers: int = 3,
    dropout: float = 0.0,
    parallel: bool = False,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DCNv2:
    return DCNv2(
        hash_size, embed_dim, mlp_dims, num_layers, dropout, parallel, sparse, layout=layout
    )


@MODELS.register("dcn_v2_tiny")
def dcn_v2_tiny(
    hash_size: int = 64,
    dropout: float = 0.0,
    sparse: bool = True,
    layout: FeatureLayout | None = None,
) -> DCNv2:
    return DCNv2(hash_size, TINY_DIM, TINY_MLP, 2, dropout, sparse=sparse, layout=layout)
