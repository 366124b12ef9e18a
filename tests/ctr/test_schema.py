"""``data.schema``: custom columns (dense, sparse with own sizes and dims, multi-valued,
ignored), declared crosses, and a model that is not Criteo's trained, exported, predicted
and served end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from e2ekit.core.errors import ConfigError
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.engine.stepper import build_model
from e2ekit.ctr.features import FeatureSchema, add_crosses
from e2ekit.ctr.models.layout import FeatureLayout

from ..conftest import ROOT

TINY = ROOT / "configs" / "ctr" / "tiny.yaml"
COLUMNS = [
    {"name": "click", "type": "label"},
    {"name": "price", "type": "dense", "transform": "log1p"},
    {"name": "age", "type": "dense"},
    {"name": "user", "type": "sparse", "hash_size": 1024, "embed_dim": 8},
    {"name": "item", "type": "sparse", "hash_size": 256},
    {"name": "tags", "type": "multi", "sep": "|", "max_len": 4},
    {"name": "note", "type": "ignore"},
]
SCHEMA = {"columns": COLUMNS, "delimiter": ",", "header": True, "crosses": [["user", "item"]]}


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def write_rows(path: Path, n: int, seed: int) -> None:
    """Clicks from user and item effects, the tags' mean, price and a user x item match."""
    rng = np.random.default_rng(seed)
    w_user, w_item, w_tag = (np.random.default_rng(7).normal(0, 1.2, k) for k in (60, 20, 12))
    users, items = rng.integers(0, 60, n), rng.integers(0, 20, n)
    price = np.floor(np.exp(rng.normal(2, 1, n)))
    lines = [",".join(c["name"] for c in COLUMNS)]
    for r in range(n):
        tags = rng.choice(12, rng.integers(0, 4), replace=False)
        logit = w_user[users[r]] + w_item[items[r]] - 1.0 + 0.3 * np.log1p(price[r])
        logit += w_tag[tags].mean() if len(tags) else 0.0
        logit += 2.0 * (users[r] % 4 == items[r] % 4)
        click = int(rng.random() < 1 / (1 + np.exp(-logit)))
        tag_text = "|".join(f"t{t}" for t in tags)
        age = f"{rng.uniform(18, 70):.1f}"
        lines.append(f"{click},{price[r]:g},{age},u{users[r]},i{items[r]},{tag_text},x{r}")
    path.write_text("\n".join(lines) + "\n")


# -- layout and pooling ----------------------------------------------------------------------
def test_layout_of_a_custom_schema() -> None:
    layout = FeatureSchema.model_validate(SCHEMA).layout(512)
    assert layout.num_dense == 2
    assert layout.slot_hash == (1024, 256, 512, 512, 512, 512, 512)
    assert layout.slot_field == (0, 1, 2, 2, 2, 2, 3)
    assert layout.field_names == ("user", "item", "tags", "user_x_item")
    assert layout.field_dims == (8, 0, 0, 0)
    assert FeatureLayout.from_dict(layout.to_dict()) == layout
    np.testing.assert_array_equal(layout.offsets, [0, 1024, 1280, 1792, 2304, 2816, 3328])


def test_pool_averages_present_values_and_falls_back_to_missing() -> None:
    layout = FeatureLayout(0, (5, 5, 5), (0, 1, 1))
    emb = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    ids = torch.tensor([[1, 2, 3], [0, 0, 0]])
    out = layout.pool(emb, ids)
    assert out.shape == (2, 2, 2)
    torch.testing.assert_close(out[0, 1], (emb[0, 1] + emb[0, 2]) / 2)
    torch.testing.assert_close(out[1, 1], emb[1, 1])  # no value: the first slot's missing row
    torch.testing.assert_close(out[:, 0], emb[:, 0])


def test_crosses_are_stable_and_missing_when_a_column_is() -> None:
    schema = FeatureSchema.model_validate({"crosses": [["C1", "C2"], ["C1", "C2", "C3"]]})
    layout = schema.layout(100)
    sparse = np.zeros((3, 26), np.int64)
    sparse[:, :3] = [[5, 7, 9], [5, 7, 1], [0, 7, 9]]
    out = add_crosses(sparse, schema, layout)
    assert out.shape == (3, 28)
    assert out[0, 26] == out[1, 26] != 0 and out[2, 26] == 0  # C1 missing: no cross
    assert out[0, 27] != out[1, 27]  # the three-way cross sees C3
    assert np.all((out[:, 26:] >= 0) & (out[:, 26:] < 100))


def test_per_field_dims_reach_the_model_and_fm_refuses_them() -> None:
    cfg = CtrConfig.model_validate(
        {"model": {"type": "dnn_tiny", "hash_size": 64}, "data": _files_schema()}
    )
    model = build_model(cfg)
    assert model.field_dims == (8, 4, 4, 4) and model.width == 8
    assert model.deep_dim() == 8 + 4 + 4 + 4 + 2
    dense, sparse = torch.rand(3, 2), torch.randint(0, 64, (3, 7))
    assert model(dense, sparse).shape == (3,)
    cfg = CtrConfig.model_validate(
        {"model": {"type": "deepfm_tiny", "hash_size": 64}, "data": _files_schema()}
    )
    with pytest.raises(ConfigError, match="same embed_dim"):
        build_model(cfg)


def _files_schema() -> dict:
    return {"schema": SCHEMA, "train": "train.csv", "val": "val.csv"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"schema": "movielens"}, "shipped schema is criteo"),
        ({"schema": {"columns": [{"name": "y", "type": "label", "sep": ","}]}}, "sep does"),
        ({"schema": {"crosses": [["C1", "C99"]]}}, "no column 'C99'"),
        ({"schema": {**SCHEMA, "crosses": [["user", "tags"]]}}, "multi column"),
        ({"schema": {"delimiter": ","}}, "custom columns"),
        ({"schema": SCHEMA}, "generated Criteo data"),
        ({**_files_schema(), "format": "criteo_csv"}, "remove data.format"),
    ],
)
def test_schema_mistakes_are_refused_with_the_reason(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CtrConfig.model_validate({"data": data})


# -- end to end ------------------------------------------------------------------------------
def test_criteo_with_a_declared_cross_trains_and_serves(cli, tmp_path: Path) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"]["schema"] = {"crosses": [["C1", "C2"]]}
    cfg["train"]["max_steps"] = 4
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run, export = tmp_path / "run", tmp_path / "export"
    code, _, err = cli("ctr", "train", "-c", path, "--out", run)
    assert code == 0, err
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["model"]["tables.embedding.weight"].shape[0] == 27 * 512
    code, out, err = cli("ctr", "export", "--weights", run, "--out", export)
    assert code == 0, err
    assert last_json(out)["max_abs_diff"] < 1e-4
    deploy = yaml.safe_load((export / "deploy.yaml").read_text())
    assert deploy["num_slots"] == 27 and "a cross" in deploy["hashing"]


def test_a_custom_schema_trains_exports_predicts_and_serves(cli, tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", 6000, seed=1)
    write_rows(tmp_path / "val.csv", 1500, seed=2)
    cfg = {
        "model": {"type": "wide_deep_tiny", "hash_size": 512},
        "data": {
            "schema": SCHEMA,
            "train": str(tmp_path / "train.csv"),
            "val": str(tmp_path / "val.csv"),
        },
        "train": {"epochs": 3, "batch_size": 128, "tensorboard": False},
        "optim": {"type": "adam", "lr": 0.02},
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run, export = tmp_path / "run", tmp_path / "export"
    code, _, err = cli("ctr", "train", "-c", path, "--out", run)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auc"] > 0.7  # the planted effects are learnable from these columns

    code, out, err = cli("ctr", "export", "--weights", run, "--out", export)
    assert code == 0, err
    assert last_json(out)["max_abs_diff"] < 1e-4
    deploy = yaml.safe_load((export / "deploy.yaml").read_text())
    assert deploy["num_dense"] == 2 and deploy["num_fields"] == 4
    assert deploy["schema"]["columns"][5]["type"] == "multi"

    out_dir = tmp_path / "pred"
    val = tmp_path / "val.csv"
    code, out, err = cli("ctr", "predict", "--model", export, "--input", val, "--out", out_dir)
    assert code == 0, err
    result = last_json(out)
    assert result["rows"] == 1500
    assert result["auc"] == pytest.approx(metrics["auc"], abs=2e-3)
    lines = (out_dir / "predictions.tsv").read_text().splitlines()[1:]
    preds = [float(line.split("\t")[0]) for line in lines]

    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.kit import get_kit
    from e2ekit.core.serve import ServeSettings, create_app

    kit = get_kit("ctr")
    app = create_app(kit.endpoints(Predictor(export)), ServeSettings(), model_info={"kit": "ctr"})
    rows = val.read_text().splitlines()[1:5]
    with TestClient(app) as client:
        ok = client.post("/predict", json={"rows": rows})
        assert ok.status_code == 200, ok.text
        np.testing.assert_allclose(ok.json()["probs"], preds[:4], atol=1e-5)
        unlabeled = [r.split(",", 1)[1] for r in rows]
        same = client.post("/predict", json={"rows": unlabeled}).json()["probs"]
        np.testing.assert_allclose(same, ok.json()["probs"], atol=1e-6)
        bad = client.post("/predict", json={"rows": ["1,abc,3,u1,i1,t1,x"]})
        assert bad.status_code == 422 and "price" in bad.text
