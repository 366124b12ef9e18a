"""Answer spans from start/end logits, across the overlapping windows of long contexts.

A context longer than the encoder's window is split into several overlapping features; the
answer is the best-scoring valid span over all of an example's features (the HF ``run_qa``
post-processing). Spans are scored ``start_logit + end_logit`` and only the top ``n_best``
start and end positions of each feature are paired, which keeps the search O(n_best^2) per
window instead of O(L^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["best_answers"]


def _no_answer() -> dict[str, Any]:
    return {"text": "", "score": float("-inf"), "start": 0, "end": 0}


def best_answers(
    examples: Sequence[Any],
    features: Sequence[dict],
    start_logits: np.ndarray | list[np.ndarray],
    end_logits: np.ndarray | list[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Best answer and n-best list per question id.

    Each answer is ``{"text", "score", "start", "end"}`` with ``start``/``end`` character
    offsets into the context (end exclusive). The n-best lists are sorted by score and carry
    ``"prob"``, a softmax over the list's scores. When the same character span wins in two
    overlapping windows it is listed once, with its higher score. An example without any
    valid span gets text ``""`` and score ``-inf`` (prob 1.0).
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(
            f"{len(features)} features but {len(start_logits)} start / "
            f"{len(end_logits)} end logit rows"
        )
    if n_best < 1 or max_answer_length < 1:
        raise ValueError("n_best and max_answer_length must be >= 1")

    by_example: dict[int, list[int]] = {}
    for i, feat in enumerate(features):
        by_example.setdefault(int(feat["example_index"]), []).append(i)

    best: dict[str, dict] = {}
    nbest: dict[str, list[dict]] = {}
    for ex_idx, example in enumerate(examples):
        context: str = example.context
        spans: dict[tuple[int, int], float] = {}
        for fi in by_example.get(ex_idx, []):
            cands = _feature_spans(
                features[fi]["offsets"], start_logits[fi], end_logits[fi], n_best, max_answer_length
            )
            for s, e, score in cands:
                key = (s, e)
                if key not in spans or score > spans[key]:
                    spans[key] = score
        ranked = sorted(spans.items(), key=lambda kv: -kv[1])[:n_best]
        answers = [
            {"text": context[s:e], "score": score, "start": s, "end": e} for (s, e), score in ranked
        ]
        if not answers:
            answers = [_no_answer()]
        scores = np.array([a["score"] for a in answers], dtype=np.float64)
        if math.isfinite(scores[0]):
            probs = np.exp(scores - scores[0])
            probs /= probs.sum()
        else:
            probs = np.full(len(answers), 1.0 / len(answers))
        for a, p in zip(answers, probs, strict=True):
            a["prob"] = float(p)
        qid = str(example.qid)
        nbest[qid] = answers
        best[qid] = {k: answers[0][k] for k in ("text", "score", "start", "end")}
    return best, nbest


def _feature_spans(
    offsets: Sequence[Sequence[int] | None],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[tuple[int, int, float]]:
    """Valid (char_start, char_end, score) candidates of one feature."""
    n = len(offsets)
    if n == 0:
        return []
    start = np.asarray(start_logits, dtype=np.float64).reshape(-1)[:n]
    end = np.asarray(end_logits, dtype=np.float64).reshape(-1)[:n]
    context_tok = np.array([o is not None for o in offsets[: len(start)]], dtype=bool)
    if not context_tok.any():
        return []
    # Rank only context tokens, so question/special tokens cannot crowd out the top n_best.
    start = np.where(context_tok, start, -np.inf)
    end = np.where(context_tok[: len(end)], end, -np.inf)
    k_s = min(n_best, int(context_tok.sum()))
    k_e = min(n_best, int(context_tok[: len(end)].sum()))
    s_idx = np.argsort(-start, kind="stable")[:k_s]
    e_idx = np.argsort(-end, kind="stable")[:k_e]
    width = e_idx[None, :] - s_idx[:, None] + 1
    valid = (width >= 1) & (width <= max_answer_length)
    out = []
    for a, b in zip(*np.nonzero(valid), strict=True):
        s, e = int(s_idx[a]), int(e_idx[b])
        cs, ce = int(offsets[s][0]), int(offsets[e][1])  # type: ignore[index]
        out.append((cs, ce, float(start[s] + end[e])))
    return out
