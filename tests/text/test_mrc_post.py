"""Span selection from hand-built start/end logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from e2ekit.text.runner import best_answers

CONTEXT = "Paris is the capital of France and its largest city"
WORDS = CONTEXT.split()


def _word_offsets() -> list[list[int]]:
    out, pos = [], 0
    for w in WORDS:
        pos = CONTEXT.index(w, pos)
        out.append([pos, pos + len(w)])
        pos += len(w)
    return out


OFFS = _word_offsets()  # one token per word, 10 words
Q = [None, None, None]  # [CLS] question [SEP] tokens


def _feature(ex: int, first: int, last: int) -> dict:
    """Window over words first..last-1, after three question/special tokens."""
    return {"example_index": ex, "offsets": Q + OFFS[first:last] + [None]}


def _logits(n: int, peaks: dict[int, float]) -> np.ndarray:
    a = np.full(n, -5.0)
    for i, v in peaks.items():
        a[i] = v
    return a


def test_best_span_across_overlapping_windows():
    ex = [SimpleNamespace(qid="q1", context=CONTEXT)]
    # Window A covers words 0..5, window B words 4..9 (overlap: "of France").
    fa, fb = _feature(0, 0, 6), _feature(0, 4, 10)
    # "France" is word 5: token 3+5=8 in A, 3+1=4 in B. B is more confident.
    sa = _logits(10, {8: 2.0, 3: 1.0})
    ea = _logits(10, {8: 2.0})
    sb = _logits(10, {4: 4.0})
    eb = _logits(10, {4: 3.0, 6: 2.5})
    best, nbest = best_answers(ex, [fa, fb], [sa, sb], [ea, eb], n_best=5)
    at = CONTEXT.index("France")
    assert best["q1"] == {"text": "France", "score": 7.0, "start": at, "end": at + 6}
    # Same char span from both windows listed once, with the higher score.
    assert [a["text"] for a in nbest["q1"]].count("France") == 1
    texts = [a["text"] for a in nbest["q1"]]
    assert texts[1] == "France and its"  # 4.0 + 2.5
    scores = [a["score"] for a in nbest["q1"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(a["prob"] for a in nbest["q1"]) == pytest.approx(1.0)
    assert nbest["q1"][0]["prob"] > nbest["q1"][1]["prob"]


def test_max_answer_length_and_question_tokens():
    ex = [SimpleNamespace(qid="q", context=CONTEXT)]
    f = _feature(0, 0, 10)
    n = len(f["offsets"])
    # Question tokens hold the highest logits; they must never be chosen.
    start = _logits(n, {0: 50.0, 1: 40.0, 3: 5.0, 7: 0.5})
    end = _logits(n, {0: 50.0, 2: 40.0, 12: 5.0, 8: 1.0})  # 12 = last word "city"
    best, _ = best_answers(ex, [f], [start], [end], max_answer_length=30)
    assert best["q"]["text"] == CONTEXT  # words 0..9, length 10
    best, nbest = best_answers(ex, [f], [start], [end], max_answer_length=9)
    assert best["q"]["text"] != CONTEXT
    assert all(len(a["text"].split()) <= 9 for a in nbest["q"])
    assert best["q"]["text"] == "Paris is the capital of France"  # s=3 (5.0) + e=8 (1.0)
    # Only logits over len(offsets) positions count: a padded row is fine.
    padded_s = np.concatenate([start, np.full(7, 99.0)])
    padded_e = np.concatenate([end, np.full(7, 99.0)])
    best_p, _ = best_answers(ex, [f], [padded_s], [padded_e], max_answer_length=30)
    assert best_p["q"]["text"] == CONTEXT


def test_n_best_ordering_probs_and_no_answer():
    exs = [SimpleNamespace(qid="a", context=CONTEXT), SimpleNamespace(qid="b", context="x")]
    f = _feature(0, 0, 10)
    n = len(f["offsets"])
    rng = np.random.default_rng(0)
    s, e = rng.normal(size=(2, n))
    # Example "b" has a feature with only question tokens: nothing valid.
    fb = {"example_index": 1, "offsets": [None, None]}
    best, nbest = best_answers(exs, [f, fb], [s, np.zeros(2)], [e, np.zeros(2)], n_best=4)
    lst = nbest["a"]
    assert 1 <= len(lst) <= 4
    assert [x["score"] for x in lst] == sorted((x["score"] for x in lst), reverse=True)
    assert sum(x["prob"] for x in lst) == pytest.approx(1.0)
    for x in lst:
        assert x["text"] == CONTEXT[x["start"] : x["end"]]
        assert x["end"] > x["start"]
    assert best["a"]["text"] == lst[0]["text"]
    assert best["b"]["text"] == "" and best["b"]["score"] == float("-inf")
    assert math.isfinite(nbest["b"][0]["prob"]) and nbest["b"][0]["prob"] == 1.0


def test_example_without_features_and_bad_input():
    ex = [SimpleNamespace(qid=7, context="abc")]
    best, nbest = best_answers(ex, [], [], [])
    assert best == {"7": {"text": "", "score": float("-inf"), "start": 0, "end": 0}}
    assert nbest["7"][0]["prob"] == 1.0
    with pytest.raises(ValueError):
        best_answers(ex, [{"example_index": 0, "offsets": [[0, 1]]}], [], [])
