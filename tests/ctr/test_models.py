"""CTR model zoo: shapes, sparse grads, learning a toy problem, FM / DCN formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import e2ekit.ctr.models  # noqa: F401  (registers the ctr models)
from e2ekit.ctr.models import SlotEmbedding, SlotLinear, sparse_parameters
from e2ekit.ctr.models.zoo import CrossLayer, CrossLayerV2, fm_interaction
from e2ekit.ctr.registry import MODELS

HASH = 32
CTR_TINY = [name for name in MODELS if name.endswith("_tiny")]  # ctr's registry: ctr's only


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, 13, generator=g) * 3  # log1p counts are >= 0
    sparse = torch.randint(0, HASH, (n, 26), generator=g)
    return dense, sparse


def test_all_families_registered() -> None:
    expected = {"lr", "fm", "dnn", "wide_deep", "deepfm", "dcn", "dcn_v2", "fwfm", "autoint"}
    assert {n.removesuffix("_tiny") for n in CTR_TINY} == expected
    for name in expected:
        assert name in MODELS


def test_slot_embedding_offsets_slots() -> None:
    emb = SlotEmbedding(hash_size=5, dim=3, num_slots=2)
    ids = torch.tensor([[1, 1]])
    out = emb(ids)  # same bucket in two slots -> rows 1 and 5 + 1
    assert out.shape == (1, 2, 3)
    torch.testing.assert_close(out[0, 0], emb.embedding.weight[1])
    torch.testing.assert_close(out[0, 1], emb.embedding.weight[6])
    assert emb.embedding.weight.abs().max() < 1e-2  # small init
    assert SlotLinear(hash_size=5, num_slots=2)(ids).shape == (1,)


@pytest.mark.parametrize("name", CTR_TINY)
def test_forward_backward_sparse_grads(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS.build({"type": name, "hash_size": HASH})
    dense, sparse = _batch()
    logits = model(dense, sparse)
    assert logits.shape == (16,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert tables
    for table in tables:
        assert table.weight.grad is not None and table.weight.grad.is_sparse
    sparse_params, dense_params = sparse_parameters(model)
    assert len(sparse_params) == len(tables) and dense_params


@pytest.mark.parametrize("name", CTR_TINY)
def test_dense_grads_when_not_sparse(name: str) -> None:
    model = MODELS.build({"type": name, "hash_size": HASH, "sparse": False})
    model(*_batch()).sum().backward()
    for table in (m for m in model.modules() if isinstance(m, nn.Embedding)):
        assert table.weight.grad is not None and not table.weight.grad.is_sparse


@pytest.mark.parametrize("name", CTR_TINY)
def test_learns_toy_problem(name: str) -> None:
    """Label = slot-0 bucket in the lower half OR first dense feature large: separable."""
    torch.manual_seed(0)
    model = MODELS.build({"type": name, "hash_size": HASH})
    dense, sparse = _batch(256, seed=1)
    label = ((sparse[:, 0] < HASH // 2) | (dense[:, 0] > 2.5)).float()
    sparse_params, dense_params = sparse_parameters(model)
    opts = [torch.optim.SparseAdam(sparse_params, lr=0.05), torch.optim.Adam(dense_params, lr=0.01)]
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(30):
        for opt in opts:
            opt.zero_grad()
        loss = loss_fn(model(dense, sparse), label)
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_fm_interaction_matches_pairwise_sum() -> None:
    v = torch.randn(3, 5, 4, dtype=torch.float64)
    brute = torch.zeros(3, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        brute += (v[:, i] * v[:, j]).sum(dim=1)
    torch.testing.assert_close(fm_interaction(v), brute)


def test_dcn_cross_layer_formula() -> None:
    layer = CrossLayer(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    xl = torch.tensor([[2.0, 0.0, 4.0]])
    # x_l . w = 2 + 0 + 2 = 4 -> x0 * 4 + b + x_l
    expected = torch.tensor([[4.0 + 0.1 + 2.0, 8.0 + 0.2 + 0.0, 12.0 + 0.3 + 4.0]])
    torch.testing.assert_close(layer(x0, xl), expected)
    # Same as the paper's outer-product form x0 x_l^T w + b + x_l.
    outer = (x0.T @ xl @ layer.weight).unsqueeze(0) + layer.bias + xl
    torch.testing.assert_close(layer(x0, xl), outer)


def test_dcn_v2_cross_layer_formula() -> None:
    layer = CrossLayerV2(3)
    x0, xl = torch.randn(2, 3), torch.randn(2, 3)
    expected = x0 * (xl @ layer.linear.weight.T + layer.linear.bias) + xl
    torch.testing.assert_close(layer(x0, xl), expected)
