"""Text metrics against hand-computed values, sklearn and seqeval; the BoW baselines."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from e2ekit.text.metrics import (
    classification_metrics,
    entity_metrics,
    squad_em_f1,
    squad_normalize,
)

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ classification


def test_classification_matches_sklearn_macro_and_binary():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, size=200))
    preds[preds == 3] = 2  # class 3 never predicted: precision undefined -> 0
    m = classification_metrics(preds.tolist(), labels.tolist(), num_classes=6)  # 4, 5 absent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))
        assert m["precision"] == pytest.approx(
            sk.precision_score(labels, preds, average="macro", zero_division=0)
        )
        assert m["recall"] == pytest.approx(sk.recall_score(labels, preds, average="macro"))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))

    b = classification_metrics(preds, labels, num_classes=6, positive=1)
    one = {"labels": [1], "average": "micro"}  # one-vs-rest score of class 1
    assert b["f1"] == pytest.approx(sk.f1_score(labels, preds, **one))
    assert b["precision"] == pytest.approx(sk.precision_score(labels, preds, **one))
    assert b["recall"] == pytest.approx(sk.recall_score(labels, preds, **one))


def test_classification_by_hand_and_edge_cases():
    # labels 0 0 1 1, preds 0 1 1 1: class0 p=1 r=.5 f=2/3; class1 p=2/3 r=1 f=.8
    m = classification_metrics([0, 1, 1, 1], [0, 0, 1, 1], 2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert classification_metrics([0, 1, 1, 1], [0, 0, 1, 1], 2, positive=1)["f1"] == 0.8
    assert classification_metrics([], [], 3) == {
        "accuracy": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    with pytest.raises(ValueError):
        classification_metrics([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        classification_metrics([0], [0, 1], 3)


# ------------------------------------------------------------------ entities

GOLD = [
    ["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
    ["B-PER", "I-PER", "O"],
]
PRED = [
    ["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
    ["B-PER", "I-PER", "O"],
]


def test_entity_metrics_seqeval_docstring_example():
    # seqeval's own classification_report example: MISC 0/0/0, PER 1/1/1, micro 0.5.
    m = entity_metrics(GOLD, PRED)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_type"]["MISC"]["f1"] == 0.0
    assert m["per_type"]["MISC"]["support"] == 1


def test_entity_metrics_bio_lenient_vs_iobes_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"]]  # stray I- starts an entity in default mode
    assert entity_metrics(gold, pred)["f1"] == 1.0

    gold_s = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred_s = [["B-PER", "E-PER", "O", "I-LOC"]]  # invalid in strict IOBES: no LOC found
    m = entity_metrics(gold_s, pred_s, scheme="IOBES")
    assert (m["precision"], m["recall"]) == (1.0, 0.5)
    assert m["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        entity_metrics(gold, pred, scheme="BILOU")


def test_entity_metrics_empty_inputs_no_warning():
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert entity_metrics([], []) == zero
        assert entity_metrics([[]], [[]]) == zero
        assert entity_metrics([["O", "O"]], [["O", "O"]]) == zero
        assert entity_metrics([["O", "O"]], [["O", "O"]], scheme="IOBES") == zero
        m = entity_metrics([["B-PER", "I-PER"]], [["O", "O"]])
    assert m["f1"] == 0.0
    assert m["per_type"]["PER"]["support"] == 1


# ------------------------------------------------------------------ SQuAD


def test_squad_normalize_official_rules():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_normalize("  An apple, a day ") == "apple day"
    assert squad_normalize("theatre") == "theatre"  # articles only as whole words


def test_squad_em_f1_hand_computed():
    refs = {
        "q1": ["Eiffel Tower"],
        "q2": ["Paris"],
        "q3": ["Seine river", "the Seine"],
        "q4": ["1889"],  # no prediction -> 0
    }
    preds = {"q1": "the Eiffel Tower", "q2": "in Paris France", "q3": "river Seine banks"}
    out = squad_em_f1(preds, refs)
    # q1: EM 1, F1 1. q2: P=1/3, R=1 -> F1 .5. q3 vs "seine river": P=2/3 R=1 -> .8;
    # vs "seine": P=1/3 R=1 -> .5; max .8.
    assert out["count"] == 4
    assert out["em"] == pytest.approx(1 / 4)
    assert out["f1"] == pytest.approx((1 + 0.5 + 0.8 + 0) / 4)
    assert squad_em_f1({}, {}) == {"em": 0.0, "f1": 0.0, "count": 0.0}


def test_squad_em_f1_cjk_mixed_segmentation():
    # Characters are tokens in CJK runs; Chinese punctuation and spaces do not matter.
    assert squad_normalize("“巴黎 铁塔”。") == "巴 黎 铁 塔"
    assert squad_normalize("iPhone手机") == "iphone 手 机"
    preds = {"a": "巴黎铁塔，", "b": "在巴黎", "c": "苹果iPhone 13"}  # noqa: RUF001
    out = squad_em_f1(preds, {"a": ["巴黎 铁塔"], "b": ["巴黎市"], "c": ["iPhone"]})
    # a: EM. b: pred 在/巴/黎, gold 巴/黎/市: common 2, P=R=2/3 -> F1 2/3.
    # c: pred 苹/果/iphone/13, gold iphone: P=1/4 R=1 -> 0.4.
    assert out["em"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx((1 + 2 / 3 + 0.4) / 3)


# ------------------------------------------------------------------ baselines


def _load_baselines():
    path = ROOT / "benchmarks" / "text" / "baselines.py"
    spec = importlib.util.spec_from_file_location("_text_baselines", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_baselines_on_toy_data(tmp_path):
    pytest.importorskip("sklearn")
    bl = _load_baselines()
    pos = ["great movie", "loved it", "great fun", "really great", "loved the cast"]
    neg = ["awful movie", "hated it", "awful plot", "really awful", "hated the cast"]
    texts = pos * 2 + neg * 2
    labels = ["1"] * 10 + ["0"] * 10
    assert len(texts) == 20
    assert bl.majority_baseline(labels[:12], labels[12:]) == 0.0  # majority "1", dev all "0"
    out = bl.bow_baseline(texts, labels, ["great cast", "awful fun"], ["1", "0"])
    assert out["accuracy"] == 1.0
    assert out["f1"] == 1.0
    assert out["analyzer"] == "word1-2"
    zh = bl.bow_baseline(["很好看"] * 10 + ["很难看"] * 10, labels, ["好看"], ["1"], positive="1")
    assert zh["analyzer"] == "char1-2"
    assert zh["accuracy"] == 1.0

    tsv = tmp_path / "train.tsv"
    tsv.write_text(
        "text_a\ttext_b\tlabel\n"
        + "".join(f"{t}\tok\t{y}\n" for t, y in zip(texts, labels, strict=True)),
        encoding="utf-8",
    )
    x, y, pair = bl.read_tsv(tsv)
    assert pair and x[0] == "great movie [SEP] ok" and y[:2] == ["1", "1"]
    assert bl.majority_baseline(y, y) == 0.5
