"""FwFM and AutoInt (field-pair interaction models) and the generator's planted interaction."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import e2ekit.ctr.models  # noqa: F401  (registers the ctr models)
from e2ekit.core.errors import ConfigError
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.synthetic import Interaction, hidden_world, write_synthetic_criteo
from e2ekit.ctr.engine.stepper import build_model
from e2ekit.ctr.export import DenseHead, export_model, sample_inputs
from e2ekit.ctr.models import sparse_parameters
from e2ekit.ctr.models.interaction import AutoInt, FwFM, InteractingLayer, fwfm_interaction
from e2ekit.ctr.registry import MODELS

HASH = 32
TINY = ["fwfm_tiny", "autoint_tiny"]


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 13, generator=g) * 3, torch.randint(0, HASH, (n, 26), generator=g)


def test_fwfm_interaction_matches_pairwise_sum() -> None:
    v = torch.randn(3, 5, 4, dtype=torch.float64)
    r = torch.randn(5, 5, dtype=torch.float64)
    brute = torch.zeros(3, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        brute += r[i, j] * (v[:, i] * v[:, j]).sum(dim=1)
    torch.testing.assert_close(fwfm_interaction(v, r), brute)


def test_fwfm_starts_as_fm() -> None:
    """All field-pair weights 1 at init: the FM term, so training starts where FM does."""
    from e2ekit.ctr.models.zoo import fm_interaction

    v = torch.randn(2, 39, 3)
    torch.testing.assert_close(fwfm_interaction(v, torch.ones(39, 39)), fm_interaction(v))


def test_interacting_layer_shapes_and_mixing() -> None:
    layer = InteractingLayer(in_dim=4, head_dim=3, num_heads=2)
    x = torch.randn(5, 7, 4)
    out = layer(x)
    assert out.shape == (5, 7, 6) and (out >= 0).all()
    y = x.clone()
    y[:, 3] += 1.0  # one field changed: attention carries it to the other fields' outputs
    assert not torch.allclose(layer(y)[:, 0], out[:, 0])


@pytest.mark.parametrize("name", TINY)
def test_forward_shapes(name: str) -> None:
    model = MODELS.build({"type": name, "hash_size": HASH})
    dense, sparse = _batch()
    assert model(dense, sparse).shape == (16,)
    emb = model.tables(sparse)
    assert emb.shape == (16, 26, model.width) and model.width == model.embed_dim + 1
    assert model.head(dense, emb).shape == (16,)


def test_full_size_builders() -> None:
    fw = MODELS.build({"type": "fwfm", "hash_size": HASH, "embed_dim": 6})
    assert isinstance(fw, FwFM) and fw.pair_weight.shape == (39, 39) and fw.width == 7
    ai = MODELS.build({"type": "autoint", "hash_size": HASH, "embed_dim": 6, "mlp_dims": []})
    assert isinstance(ai, AutoInt) and ai.mlp is None and len(ai.attention) == 3
    assert ai(*_batch(4)).shape == (4,)


@pytest.mark.parametrize("name", TINY)
def test_tiny_trains_loss_down(name: str) -> None:
    """Label = XOR of two slots' bucket halves: a pure field-pair interaction."""
    torch.manual_seed(0)
    model = MODELS.build({"type": name, "hash_size": HASH})
    dense, sparse = _batch(256, seed=1)
    label = ((sparse[:, 0] < HASH // 2) ^ (sparse[:, 1] < HASH // 2)).float()
    sparse_params, dense_params = sparse_parameters(model)
    opts = [torch.optim.SparseAdam(sparse_params, lr=0.05), torch.optim.Adam(dense_params, lr=0.02)]
    losses = []
    for _ in range(40):
        for opt in opts:
            opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), label)
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _cfg(name: str, **model: Any) -> CtrConfig:
    return CtrConfig.model_validate(
        {"model": {"type": name, "hash_size": HASH, **model}, "export": {"sample_batch": 4}}
    )


@pytest.mark.parametrize("name", TINY)
def test_onnx_parity(name: str, tmp_path: Path) -> None:
    """The exported dense head scores like the PyTorch head (trained-looking weights)."""
    torch.manual_seed(0)
    cfg = _cfg(name)
    model = build_model(cfg)
    with torch.no_grad():  # away from the near-zero init, so the test sees real interactions
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    report = export_model(model, cfg, tmp_path / "export", quiet=True)
    assert report["onnx"]["passed"] and report["onnx"]["max_abs_diff"] < 1e-5
    inputs = sample_inputs(model, 32, seed=7)
    with torch.no_grad():
        want = DenseHead(model.eval())(**inputs).numpy()
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# every model key does something for these models, or is refused naming the key
KEY_VALUES = {"embed_dim": 5, "mlp_dims": [7], "num_layers": 1, "dropout": 0.2}
USED = {"fwfm": {"embed_dim"}, "autoint": {"embed_dim", "mlp_dims", "num_layers", "dropout"}}


@pytest.mark.parametrize("name", sorted(USED))
@pytest.mark.parametrize("key", sorted(KEY_VALUES))
def test_model_keys_change_network_or_are_refused(name: str, key: str) -> None:
    base = build_model(_cfg(name))
    if key in USED[name]:
        changed = build_model(_cfg(name, **{key: KEY_VALUES[key]}))
        assert repr(changed) != repr(base) or sum(p.numel() for p in changed.parameters()) != sum(
            p.numel() for p in base.parameters()
        )
    else:
        with pytest.raises(ConfigError, match=key):
            build_model(_cfg(name, **{key: KEY_VALUES[key]}))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("part-0.tsv", "probs.npy", "labels.npy"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def test_generator_default_unchanged_and_planted_deterministic(tmp_path: Path) -> None:
    """No interaction: the bytes the generator wrote before it had the option (digest pinned);
    a planted one: deterministic, different labels' probabilities, a higher Bayes AUC."""
    plain = write_synthetic_criteo(tmp_path / "plain", rows=3000, seed=0)
    assert hashlib.sha256(plain.files[0].read_bytes()).hexdigest()[:16] == "f035075f494daf93"
    assert hashlib.sha256(plain.probs_path.read_bytes()).hexdigest()[:16] == "2d359ddcc737c3e9"
    world = hidden_world(0)
    assert world["cardinality"][2] == 200 and world["cardinality"][15] == 457
    used = set(world["weighted_slots"]) | {s for c in world["crosses"] for s in c}
    assert not {2, 15} & used
    planted = Interaction(slot_a=2, slot_b=15, scale=2.0)
    a = write_synthetic_criteo(tmp_path / "a", rows=3000, seed=0, interaction=planted)
    write_synthetic_criteo(tmp_path / "b", rows=3000, seed=0, interaction=planted)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "plain")
    # the planted term is a function of the value pair alone: rows sharing a pair share it
    pa_, pp = np.load(a.probs_path), np.load(plain.probs_path)
    rows = [line.split("\t") for line in a.files[0].read_text().splitlines()]
    lift = np.log(pa_ / (1 - pa_)) - np.log(pp / (1 - pp))  # planted term + the bias shift
    by_pair: dict[tuple[str, str], list[float]] = {}
    for row, d in zip(rows, lift, strict=True):
        by_pair.setdefault((row[14 + 2], row[14 + 15]), []).append(float(d))
    assert max(np.ptp(v) for v in by_pair.values()) < 1e-4  # float32 probs
    assert np.std([v[0] for v in by_pair.values()]) > 1.0
    assert a.bayes_auc() > plain.bayes_auc()
    with pytest.raises(ValueError, match="differ"):
        Interaction(3, 3)
