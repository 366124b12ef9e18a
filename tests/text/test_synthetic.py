"""Built-in synthetic data: parses with the readers, deterministic, balanced, not trivial."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.text.data.readers import check_labels, read_ner, read_squad, read_text_pairs
from e2ekit.text.data.synthetic import NEG, POS, TASKS, builtin_dir, write_builtin


def _labels(paths: dict) -> list[str]:
    return paths["labels"].read_text(encoding="utf-8").split()


@pytest.mark.parametrize("task", ["cls", "pair"])
def test_cls_pair_parse_and_are_balanced(tmp_path, task):
    paths = write_builtin(task, tmp_path, num_train=60, num_dev=20, seed=3)
    names = _labels(paths)
    train = read_text_pairs(paths["train"], pair=task == "pair", require_label=True)
    dev = read_text_pairs(paths["dev"], pair=task == "pair", require_label=True)
    assert (len(train), len(dev)) == (60, 20)
    check_labels(train + dev, names, paths["train"])
    assert [e.label for e in train].count(names[0]) == 30  # exactly balanced
    test = read_text_pairs(paths["test"], pair=task == "pair", require_label=False)
    assert test and all(e.label is None for e in test)
    assert "label" not in paths["test"].read_text(encoding="utf-8").splitlines()[0]
    if task == "cls":
        assert all(10 <= len(e.text_a.split()) <= 30 for e in train)


def test_cls_is_not_solvable_by_counting_sentiment_words(tmp_path):
    paths = write_builtin("cls", tmp_path, num_train=400, num_dev=10)
    train = read_text_pairs(paths["train"], pair=False, require_label=True)

    def guess(text: str) -> str:
        words = text.replace(",", " ").replace(".", " ").split()
        score = sum(w in POS for w in words) - sum(w in NEG for w in words)
        return "positive" if score > 0 else "negative"

    accuracy = sum(guess(e.text_a) == e.label for e in train) / len(train)
    assert 0.5 < accuracy < 0.8
    assert any(" not " in e.text_a for e in train) and any(" but " in e.text_a for e in train)


def test_ner_parses_with_multiword_entities(tmp_path):
    paths = write_builtin("ner", tmp_path, num_train=80, num_dev=10)
    train = read_ner(paths["train"], require_label=True)
    check_labels(train, _labels(paths), paths["train"])
    tags = {t for e in train for t in e.tags}
    assert {"B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "O"} <= tags
    test = read_ner(paths["test"], require_label=False)
    assert test and all(e.tags is None for e in test)


def test_mrc_answers_are_exact_spans(tmp_path):
    paths = write_builtin("mrc", tmp_path, num_train=30, num_dev=10)
    assert paths["labels"] is None
    train = read_squad(paths["train"], require_answers=True)
    assert len(train) == 30 and len({e.qid for e in train}) == 30
    for e in train:
        (ans,) = e.answers
        assert e.context[ans["answer_start"] :].startswith(ans["text"])
    assert 3 <= train[0].context.count(".") <= 6
    test = read_squad(paths["test"], require_answers=False)
    assert test and all(e.answers == [] for e in test)


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_bytes(tmp_path, task):
    a = write_builtin(task, tmp_path / "a", num_train=20, num_dev=5, seed=7)
    b = write_builtin(task, tmp_path / "b", num_train=20, num_dev=5, seed=7)
    c = write_builtin(task, tmp_path / "c", num_train=20, num_dev=5, seed=8)
    for key in ("train", "dev", "test", "labels"):
        if a[key] is not None:
            assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes()
    assert Path(a["train"]).read_bytes() != Path(c["train"]).read_bytes()


def test_builtin_dir_is_cached_under_e2ekit_data(tmp_path, monkeypatch):
    monkeypatch.setenv("E2EKIT_DATA", str(tmp_path))
    params = {"num_train": 10, "num_dev": 4, "seed": 0}
    first = builtin_dir("cls", params)
    assert first.parent == tmp_path / "text" and first.name.startswith("cls-")
    assert (first / "train.tsv").is_file() and (first / "labels.txt").is_file()
    mtime = (first / "train.tsv").stat().st_mtime_ns
    assert builtin_dir("cls", dict(params)) == first
    assert (first / "train.tsv").stat().st_mtime_ns == mtime  # reused, not regenerated
    assert builtin_dir("cls", {**params, "seed": 1}) != first
    assert not [p for p in (tmp_path / "text").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ConfigError, match="no parameter size"):
        builtin_dir("cls", {"size": 3})
    with pytest.raises(ConfigError, match="available: cls, pair, ner, mrc"):
        builtin_dir("qa", params)
