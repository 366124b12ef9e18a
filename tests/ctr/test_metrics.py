from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from e2ekit.ctr.data import auc as data_auc
from e2ekit.ctr.metrics import CtrMetrics, roc_auc


def _data(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + y - 1.5)))
    if ties:
        p = np.round(p, 2).clip(0.01, 0.99)  # heavy ties, away from the logloss clip
    return y, p


@pytest.mark.parametrize("ties", [False, True])
def test_golden_vs_sklearn(ties: bool) -> None:
    y, p = _data(5000, 1, ties)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    m = CtrMetrics()
    for lo in range(0, y.size, 700):  # uneven batches
        m.update(y[lo : lo + 700], p[lo : lo + 700])
    r = m.compute()
    # Stored probs are float32: AUC on the float32 values is exact, equal to sklearn's on them.
    assert r["auc"] == pytest.approx(roc_auc_score(y, p.astype(np.float32)), abs=1e-12)
    assert r["logloss"] == pytest.approx(log_loss(y, p), rel=1e-10)
    assert r["samples"] == 5000 and r["positives"] == int(y.sum())
    assert r["ctr_observed"] == pytest.approx(y.mean())
    assert r["ctr_predicted"] == pytest.approx(p.mean())
    assert r["calibration"] == pytest.approx(p.mean() / y.mean())


def test_torch_inputs_and_alias() -> None:
    y, p = _data(1000, 2, True)
    m = CtrMetrics().update(torch.tensor(y, dtype=torch.float32), torch.tensor(p).view(-1, 1))
    assert m.compute()["auc"] == pytest.approx(roc_auc_score(y, p.astype(np.float32)))
    assert data_auc is roc_auc  # e2ekit.ctr.data.auc is the same function
    assert roc_auc(torch.tensor(y), torch.tensor(p)) == pytest.approx(roc_auc_score(y, p))


def test_merge_halves_equals_whole() -> None:
    y, p = _data(3001, 3, True)
    whole = CtrMetrics().update(y, p).compute()
    a, b = CtrMetrics().update(y[:1200], p[:1200]), CtrMetrics().update(y[1200:], p[1200:])
    merged = a.merge(b).compute()
    for key in ("auc", "samples", "positives", "ctr_observed"):
        assert merged[key] == whole[key]
    for key in ("logloss", "ctr_predicted", "calibration"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-12)
    assert merged["calibration_bins"] == whole["calibration_bins"]


def test_single_class_and_empty() -> None:
    r = CtrMetrics().update(np.zeros(50), np.full(50, 0.1)).compute()
    assert r["auc"] is None and r["calibration"] is None
    assert r["logloss"] == pytest.approx(-np.log(0.9))
    r = CtrMetrics().update(np.ones(5), np.array([0.0, 0.5, 1.0, 1.0, 0.9])).compute()
    assert r["auc"] is None and r["positives"] == 5
    assert r["logloss"] == pytest.approx((-np.log(1e-7) - np.log(0.5) - np.log(0.9)) / 5)
    empty = CtrMetrics().compute()
    assert empty["samples"] == 0 and empty["auc"] is None and empty["calibration_bins"] == []
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


def test_perfect_and_inverted() -> None:
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.3, 0.8, 0.9])
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, 1 - s) == 0.0
    assert roc_auc(y, np.full(6, 0.5)) == 0.5
    assert CtrMetrics().update(y, s).compute()["auc"] == 1.0


def test_calibration_bins_hand_made() -> None:
    # 20 rows: probs 0.05, 0.10, ..., 1.00 (shuffled); positives at probs >= 0.75 and 0.2.
    probs = np.arange(1, 21) / 20
    labels = (probs >= 0.75).astype(int)
    labels[3] = 1  # prob 0.2
    perm = np.random.default_rng(0).permutation(20)
    m = CtrMetrics()
    m.update(labels[perm][:7], probs[perm][:7]).update(labels[perm][7:], probs[perm][7:])
    bins = m.compute()["calibration_bins"]
    assert len(bins) == 10 and sum(b["n"] for b in bins) == 20
    assert [b["n"] for b in bins] == [2] * 10
    expect_obs = [0, 0.5, 0, 0, 0, 0, 0, 1, 1, 1]  # pairs (0.05,.1) (.15,.2) ... (.95,1)
    assert [b["obs"] for b in bins] == expect_obs
    for i, b in enumerate(bins):
        assert b["pred"] == pytest.approx((probs[2 * i] + probs[2 * i + 1]) / 2, abs=1e-7)
    few = CtrMetrics().update([0, 1, 1], [0.2, 0.4, 0.6]).compute()["calibration_bins"]
    assert [b["n"] for b in few] == [1, 1, 1]
    odd = CtrMetrics().update(*_data(1003, 4, True)).compute()
    assert sum(b["n"] for b in odd["calibration_bins"]) == odd["samples"] == 1003


def test_validation_and_reset() -> None:
    m = CtrMetrics()
    with pytest.raises(ValueError):
        m.update([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError):
        m.update([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        m.update([0, 1, 1], [0.5, 0.5])
    m.update([0, 1], [0.3, 0.6])
    m.reset()
    assert m.compute()["samples"] == 0


def test_many_tiny_batches_compact() -> None:
    y, p = _data(2000, 5, False)
    m = CtrMetrics()
    for i in range(y.size):
        m.update(y[i : i + 1], p[i : i + 1])
    assert len(m._labels) < 2000 // 4  # compacted every 256 tiny chunks
    labels, probs = m.arrays()
    assert np.array_equal(labels, y) and np.array_equal(probs, p.astype(np.float32))
    assert m.compute()["auc"] == pytest.approx(roc_auc_score(y, p.astype(np.float32)))
