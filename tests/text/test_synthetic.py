"""Built-in synthetic data: parses with the readers, deterministic, balanced, not trivial,
and dev/test hold out words, names, templates and question wordings that train never uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.text.data import synthetic
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
    assert 4 <= train[0].context.count(".") <= 8
    test = read_squad(paths["test"], require_answers=False)
    assert test and all(e.answers == [] for e in test)


def _entities(examples) -> set[str]:
    spans: list[list[str]] = []
    for e in examples:
        for token, tag in zip(e.tokens, e.tags, strict=True):
            if tag.startswith("B-"):
                spans.append([token])
            elif tag.startswith("I-"):
                spans[-1].append(token)
    return {" ".join(span) for span in spans}


def _skeleton(e) -> tuple[str, ...]:
    """The sentence with entities and day/month names blanked: which template it came from."""
    words = [t[2:] if t != "O" else w.lower() for w, t in zip(e.tokens, e.tags, strict=True)]
    blank = set(synthetic.DAYS + synthetic.MONTHS)
    return tuple("#" if w in blank else w for w, t in zip(words, e.tags, strict=True)
                 if not t.startswith("I-"))  # fmt: skip


def test_ner_dev_and_test_hold_out_entities_and_templates(tmp_path):
    paths = write_builtin("ner", tmp_path, num_train=400, num_dev=100)
    train = read_ner(paths["train"], require_label=True)
    dev = read_ner(paths["dev"], require_label=True)
    test_tokens = {w for e in read_ner(paths["test"], require_label=False) for w in e.tokens}
    seen = _entities(train)
    held = _entities(dev)
    assert len(held) >= 20 and not held & seen  # no dev entity string appears in train
    assert not {w for s in seen for w in s.split()} & {"Lincoln", "Chester", "Kowalski"}
    assert "Lincoln" in {w for s in held for w in s.split()} | test_tokens
    unseen = [e for e in dev if _skeleton(e) not in {_skeleton(t) for t in train}]
    assert 0.1 < len(unseen) / len(dev) < 0.5  # ~1/4 of dev sentences use held-out templates
    for e in train + dev:  # BIO stays valid: an I- tag continues a span of the same type
        for prev, tag in zip(["O", *e.tags], e.tags, strict=False):
            assert not tag.startswith("I-") or prev[2:] == tag[2:]


def test_mrc_dev_holds_out_people_and_wordings_and_has_distractors(tmp_path):
    paths = write_builtin("mrc", tmp_path, num_train=200, num_dev=60)
    train = read_squad(paths["train"], require_answers=True)
    dev = read_squad(paths["dev"], require_answers=True)
    for e in dev:
        (ans,) = e.answers
        assert e.context[ans["answer_start"] :].startswith(ans["text"])
        assert e.context.count(" was born in ") == 2  # the relative's birth is a distractor
    train_context = " ".join(e.context for e in train)
    dev_names = {e.context.split(" was born")[0] for e in dev}
    assert not [n for n in dev_names if n in train_context]

    def wordings(examples) -> set[str]:  # the question with its names blanked
        return {re.sub(r"(?<= )[A-Z][a-z]+( [A-Z][a-z]+)*", "X", e.question) for e in examples}

    assert "When was X born?" in wordings(dev) - wordings(train)
    # some questions ask about the relative, so the answer must match the question's subject
    relative = [re.search(r"'s \w+ (\w+ \w+) was born", e.context).group(1) for e in train]
    assert any(name in e.question for name, e in zip(relative, train, strict=True))


@pytest.mark.parametrize("task", ["cls", "pair"])
def test_cls_pair_dev_uses_words_train_never_saw(tmp_path, task):
    paths = write_builtin(task, tmp_path, num_train=600, num_dev=200)
    pair = task == "pair"
    train = read_text_pairs(paths["train"], pair=pair, require_label=True)
    dev = read_text_pairs(paths["dev"], pair=pair, require_label=True)

    def vocab(examples) -> set[str]:
        text = " ".join(f"{e.text_a} {e.text_b or ''}" for e in examples)
        return set(re.findall(r"[a-z]+", text))

    new = vocab(dev) - vocab(train)
    if task == "cls":
        assert {"superb", "brilliant", "dreadful", "mediocre"} <= new  # held-out sentiment
        assert sum(bool(set(e.text_a[:-1].replace(",", "").split()) & new) for e in dev) > 50
    else:
        assert {"carpet", "rug", "clever", "constructed"} <= new  # held-out synonyms


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
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert builtin_dir("cls", dict(params)) != first  # a new generator never reuses old data
    assert not [p for p in (tmp_path / "text").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ConfigError, match="no parameter size"):
        builtin_dir("cls", {"size": 3})
    with pytest.raises(ConfigError, match="available: cls, pair, ner, mrc"):
        builtin_dir("qa", params)
