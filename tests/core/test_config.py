"""Config loading: _base_ merge, overrides, strict validation with named keys and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ekit.core.config import load_config, load_yaml_tree, merge, parse_override, save_config
from e2ekit.core.errors import ConfigError
from e2ekit.core.schema import RunConfig


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_merges_dicts_and_replaces_lists(tmp_path: Path) -> None:
    write(
        tmp_path / "base.yaml",
        "train:\n  batch_size: 8\n  epochs: 3\nmodel: {type: a, layers: [1, 2, 3]}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\ntrain:\n  batch_size: 16\nmodel:\n  layers: [9]\n",
    )
    tree, prov = load_yaml_tree(child)
    assert tree["train"] == {"batch_size": 16, "epochs": 3}
    assert tree["model"] == {"type": "a", "layers": [9]}
    assert prov["train.epochs"].endswith("base.yaml")
    assert prov["train.batch_size"].endswith("child.yaml")


def test_base_by_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user config beside no shipped file bases itself on ``quick`` (its kit's) or on
    ``det/quick``; a file beside it of the same name wins; an unknown name lists the kit's."""
    shipped = tmp_path / "configs"
    write_dir = shipped / "toy"
    write_dir.mkdir(parents=True)
    write(write_dir / "quick.yaml", "train: {batch_size: 8, epochs: 3}\n")
    (shipped / "det").mkdir()
    write(shipped / "det" / "quick.yaml", "train: {batch_size: 4}\n")
    monkeypatch.setenv("E2EKIT_CONFIGS", str(shipped))
    user = tmp_path / "mine"
    user.mkdir()
    child = write(user / "a.yaml", "_base_: quick\ntrain: {epochs: 5}\n")
    tree, prov = load_yaml_tree(child, kit="toy")
    assert tree["train"] == {"batch_size": 8, "epochs": 5}
    assert prov["train.batch_size"] == str(write_dir / "quick.yaml")
    other = write(user / "b.yaml", "_base_: det/quick\n")
    assert load_yaml_tree(other)[0]["train"] == {"batch_size": 4}
    write(user / "quick.yaml", "train: {batch_size: 2}\n")  # beside the file: first
    assert load_yaml_tree(child, kit="toy")[0]["train"]["batch_size"] == 2
    typo = write(user / "c.yaml", "_base_: quik\n")
    with pytest.raises(
        ConfigError, match=r"_base_ file 'quik' not found.*shipped toy configs: quick"
    ):
        load_yaml_tree(typo, kit="toy")
    with pytest.raises(ConfigError, match="_base_ file 'quick' not found"):
        load_yaml_tree(write(tmp_path / "d.yaml", "_base_: quick\n"))  # no kit: no shipped


def test_delete_replaces_a_base_section(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "model: {type: yolo, anchors: [[1, 2]]}\ntrain: {epochs: 3}\n")
    child = write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\nmodel:\n  _delete_: true\n  type: retina\n  head: {depth: 2}\n",
    )
    tree, _ = load_yaml_tree(child)
    assert tree["model"] == {"type": "retina", "head": {"depth": 2}}  # no leaked anchors
    assert tree["train"] == {"epochs": 3}
    # without a base, or nested, the marker never reaches the schema
    assert merge({}, {"a": {"_delete_": True, "b": {"_delete_": True, "c": 1}}}) == {
        "a": {"b": {"c": 1}}
    }


def test_merge_does_not_mutate_inputs() -> None:
    a = {"x": {"y": 1}}
    b = {"x": {"z": 2}}
    assert merge(a, b) == {"x": {"y": 1, "z": 2}}
    assert a == {"x": {"y": 1}}


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optim.lr=1e-3", ["optim", "lr"], 0.001),
        ("train.amp=off", ["train", "amp"], "off"),
        ("train.shuffle=false", ["train", "shuffle"], False),
        ("model.layers=[1, 2]", ["model", "layers"], [1, 2]),
        ("data.root=/tmp/x y", ["data", "root"], "/tmp/x y"),
        ("train.metric=", ["train", "metric"], None),
    ],
)
def test_override_values_are_yaml_typed(text: str, key: list[str], value: object) -> None:
    assert parse_override(text) == (key, value)


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "train:\n  batch_size: 8\n")
    cfg = load_config(
        cfg_file, RunConfig, ["train.batch_size=4", "optim.lr=0.5", "sched.type=cosine"]
    )
    assert cfg.train.batch_size == 4
    assert cfg.optim.lr == 0.5
    assert cfg.sched.type == "cosine"


def test_unknown_key_names_file_key_and_closest(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "train:\n  batch_szie: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, RunConfig)
    msg = str(info.value)
    assert "c.yaml" in msg
    assert "'train.batch_szie'" in msg
    assert "did you mean 'train.batch_size'" in msg
    assert "\n" not in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'.*did you mean 'optim'"):
        load_config(cfg_file, RunConfig)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, RunConfig)
    msg = str(info.value)
    assert "c.yaml" in msg and "'optim.lr'" in msg and "'fast'" in msg


def test_override_error_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"-o train.epochs=many.*'train.epochs'"):
        load_config(None, RunConfig, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'"):
        load_config(None, RunConfig, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"key\.subkey=value"):
        load_config(None, RunConfig, ["train.epochs"])


def test_missing_base_names_both_files(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, RunConfig)
    assert "c.yaml" in str(info.value) and "nowhere.yaml" in str(info.value)


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml", RunConfig)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "train:\n  batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(cfg_file, RunConfig)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, RunConfig, ["train.max_steps=5", "optim.betas=[0.8, 0.9]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml", RunConfig)
    assert again == cfg


def test_a_value_error_keeps_its_case() -> None:
    """Only the first letter is lowered: 'Mi' (mebi) and 'mi' (milli) are different advice."""
    from pydantic import field_validator

    from e2ekit.core.config import validate

    class Sized(RunConfig):
        size: str = "1Gi"

        @field_validator("size")
        @classmethod
        def _quantity(cls, v: str) -> str:
            if not v.endswith(("Ki", "Mi", "Gi")):
                raise ValueError("Use Ki, Mi or Gi (Kubernetes quantities)")
            return v

    with pytest.raises(ConfigError) as info:
        validate({"size": "8 GB"}, Sized)
    assert "value error, Use Ki, Mi or Gi (Kubernetes quantities)" in str(info.value)
