"""Synthetic Criteo generator: determinism, CTR, known Bayes AUC, partitions; exact AUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from e2ekit.ctr.data import auc, bayes_auc, write_synthetic_criteo


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_synthetic_criteo(tmp_path / "a", rows=2000, seed=5)
    b = write_synthetic_criteo(tmp_path / "b", rows=2000, seed=5)
    c = write_synthetic_criteo(tmp_path / "c", rows=2000, seed=6)
    assert a.files[0].read_bytes() == b.files[0].read_bytes()
    assert a.files[0].read_bytes() != c.files[0].read_bytes()
    lines = a.files[0].read_text().splitlines()
    assert len(lines) == 2000
    assert all(len(line.split("\t")) == 40 for line in lines)


def test_ctr_and_bayes_auc(tmp_path: Path) -> None:
    info = write_synthetic_criteo(tmp_path, rows=20000, seed=0)
    probs = np.load(info.probs_path)
    assert probs.shape == (20000,) and probs.min() > 0 and probs.max() < 1
    assert 0.03 <= info.ctr <= 0.25
    best = bayes_auc(tmp_path)
    assert best == info.bayes_auc()
    assert 0.65 < best < 0.99
    fields = [line.split("\t") for line in info.files[0].read_text().splitlines()[:2000]]
    dense_missing = np.mean([[f == "" for f in row[1:14]] for row in fields])
    assert 0.1 <= dense_missing <= 0.4


def test_partitions_and_donefiles(tmp_path: Path) -> None:
    parts = ["20240101/00", "20240101/01", "20240102/00"]
    info = write_synthetic_criteo(tmp_path, rows=301, seed=1, partitions=parts)
    assert info.files == [tmp_path / p / "part-0.tsv" for p in parts]
    for p in parts:
        assert (tmp_path / p / "_SUCCESS").is_file()
    counts = [len(f.read_text().splitlines()) for f in info.files]
    assert sum(counts) == 301 and max(counts) - min(counts) <= 1
    assert np.load(info.labels_path).shape == (301,)
    with pytest.raises(ValueError, match="YYYYMMDD/HH"):
        write_synthetic_criteo(tmp_path, rows=10, partitions=["2024-01-01"])


def test_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    for ties in (False, True):
        y = rng.integers(0, 2, 5000)
        s = rng.normal(size=5000) + y * 0.5
        if ties:
            s = np.round(s, 1)
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError):
        auc([1, 1], [0.1, 0.2])
