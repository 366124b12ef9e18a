"""Fused row optimizers match torch's reference optimizers on the rows a batch touched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from e2ekit.ctr.engine.row_optim import RowOptimizer

ROWS, WIDTH = 20, 3


def _steps(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        ids = torch.randint(0, ROWS // 2, (12,), generator=g)  # repeats; rows 10.. untouched
        out.append((ids, torch.randn(12, WIDTH, generator=g)))
    return out


def _reference(kind: str, lr: float) -> torch.Tensor:
    torch.manual_seed(0)
    emb = nn.Embedding(ROWS, WIDTH, sparse=kind == "adam")
    if kind == "adam":
        opt: torch.optim.Optimizer = torch.optim.SparseAdam(emb.parameters(), lr=lr)
    elif kind == "adagrad":
        opt = torch.optim.Adagrad(emb.parameters(), lr=lr, eps=1e-8)
    else:
        opt = torch.optim.SGD(emb.parameters(), lr=lr)
    for ids, grad in _steps():
        opt.zero_grad()
        (emb(ids) * grad).sum().backward()  # d/d row = sum of its grads
        opt.step()
    return emb.weight.detach()


@pytest.mark.parametrize("kind", ["adam", "adagrad", "sgd"])
def test_matches_torch(kind: str) -> None:
    torch.manual_seed(0)
    table = nn.Embedding(ROWS, WIDTH).weight.detach().clone()
    start = table.clone()
    opt = RowOptimizer(table, kind, lr=0.1)
    for ids, grad in _steps():
        opt.step(ids, grad)
    torch.testing.assert_close(table, _reference(kind, 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(table[ROWS // 2 :], start[ROWS // 2 :])  # untouched rows
    if kind != "sgd":  # SGD keeps no state: every row counts as touched
        assert set(opt.touched_rows().tolist()) <= set(range(ROWS // 2))


def test_rowwise_adagrad_one_state_per_row() -> None:
    table = torch.zeros(ROWS, WIDTH)
    opt = RowOptimizer(table, "rowwise_adagrad", lr=1.0)
    ids = torch.tensor([3, 3])
    grad = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0]])  # coalesced: [2, 2, 2]
    opt.step(ids, grad)
    assert opt.state["sum"].shape == (ROWS,)
    assert opt.state["sum"][3] == pytest.approx(4.0)  # mean of squares of the coalesced row
    torch.testing.assert_close(table[3], torch.full((WIDTH,), -1.0))  # 2 / sqrt(4)
    assert opt.touched_rows().tolist() == [3]


def test_reset_rows_and_state_round_trip() -> None:
    table = torch.zeros(ROWS, WIDTH)
    opt = RowOptimizer(table, "adam", lr=0.1)
    opt.step(torch.tensor([1, 2]), torch.ones(2, WIDTH))
    saved = {k: v.clone() for k, v in opt.state_dict()["state"].items()}
    opt.reset_rows(torch.tensor([1]))
    assert opt.state["exp_avg"][1].abs().sum() == 0 and opt.state["exp_avg"][2].abs().sum() > 0
    assert table[1].abs().max() < 1e-2
    other = RowOptimizer(torch.zeros(ROWS, WIDTH), "adam")
    other.load_state_dict({"kind": "adam", "state": saved})
    torch.testing.assert_close(other.state["exp_avg"], saved["exp_avg"])
    with pytest.raises(ValueError, match="row optimizer is 'adam'"):
        RowOptimizer(torch.zeros(ROWS, WIDTH), "sgd").load_state_dict({"kind": "adam", "state": {}})
