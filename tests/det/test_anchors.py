"""Anchor fitting: k-means with IoU distance recovers known box-size clusters; the CLI verb
prints per-level anchors for a config's train boxes at its input size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from e2ekit.det.anchors import kmeans_anchors, mean_best_iou, wh_iou

from ..conftest import ROOT


def test_wh_iou_centred() -> None:
    iou = wh_iou(np.array([[10.0, 10.0], [20.0, 5.0]]), np.array([[10.0, 10.0], [5.0, 20.0]]))
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[1, 1] == pytest.approx(25 / 175)  # 5x5 overlap of two 100-px boxes
    assert iou[0, 1] == pytest.approx(50 / 150)


def test_kmeans_recovers_clusters() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([[8, 8], [16, 32], [32, 16], [40, 40], [64, 96], [120, 80]], dtype=float)
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (200, 2)) for c in truth])
    got = kmeans_anchors(wh, k=6, seed=0)
    assert (np.diff(got.prod(1)) >= 0).all()  # sorted small to large
    for c in truth:
        assert wh_iou(c[None], got).max() > 0.9
    assert mean_best_iou(wh, got) > mean_best_iou(wh, got * 1.5)


def test_kmeans_needs_enough_boxes() -> None:
    with pytest.raises(ValueError, match="at least 9 boxes"):
        kmeans_anchors(np.ones((5, 2)), k=9)


def test_anchors_verb(cli) -> None:
    config = str(ROOT / "configs" / "det" / "tiny.yaml")
    code, out, err = cli("det", "anchors", "-c", config, "--size", "96", "--levels", "2")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["anchors"]) == 2 and all(len(level) == 3 for level in result["anchors"])
    assert result["input_size"] == 96 and result["boxes"] > 0
    assert 0.5 < result["mean_best_iou"] <= 1.0


def test_anchors_verb_bad_flags(cli) -> None:
    config = str(ROOT / "configs" / "det" / "tiny.yaml")
    code, _, err = cli("det", "anchors", "-c", config, "--levels", "0")
    assert code != 0 and "--levels must be >= 1" in err
    code, _, err = cli("det", "anchors", "-c", config, "--levels", "9", "--per-level", "9")
    assert code != 0 and "cannot fit 81 anchors" in err and "Traceback" not in err
