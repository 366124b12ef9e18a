"""Text metrics: classification accuracy/F1, entity-level NER scores, SQuAD-style EM/F1.

Classification works from one numpy confusion matrix (no sklearn import at module load, so
evaluation stays cheap to import). Entity scores come from seqeval, the reference most NER
papers and PaddleNLP report. Reading-comprehension scores follow the official SQuAD v1.1
``evaluate-v1.1.py``; text with CJK characters is tokenised per character (mixed
segmentation, as the MLQA / CMRC2018 evaluators do) because Chinese has no spaces and a
whole-sentence "word" would make F1 all-or-nothing.
"""

from __future__ import annotations

import re
import string
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "classification_metrics",
    "entity_metrics",
    "squad_em_f1",
    "squad_normalize",
]


# --------------------------------------------------------------------------- classification


def classification_metrics(
    preds: Sequence[int],
    labels: Sequence[int],
    num_classes: int,
    *,
    positive: int | None = None,
) -> dict[str, float]:
    """Accuracy plus macro F1 (or binary F1 of ``positive``) with matching precision/recall.

    Macro averages run over the classes that occur in the labels or the predictions, as
    sklearn's ``average="macro"`` does with its default label set; an undefined precision or
    recall (no predictions / no support) counts as 0.
    """
    p = np.asarray(preds, dtype=np.int64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, arr in (("prediction", p), ("label", y)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes}): {arr.min()}..{arr.max()}")
    if positive is not None and not 0 <= positive < num_classes:
        raise ValueError(f"positive={positive} outside [0, {num_classes})")
    if y.size == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}

    cm = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes)  # rows: label, cols: prediction
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)

    if positive is not None:
        idx: Any = positive
        prec, rec, f = precision[idx], recall[idx], f1[idx]
    else:
        present = denom > 0
        prec, rec, f = precision[present].mean(), recall[present].mean(), f1[present].mean()
    return {
        "accuracy": float(tp.sum() / y.size),
        "precision": float(prec),
        "recall": float(rec),
        "f1": float(f),
    }


# --------------------------------------------------------------------------- entities


def entity_metrics(
    true_tags: list[list[str]], pred_tags: list[list[str]], scheme: str = "BIO"
) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 and per-type scores from seqeval.

    ``"BIO"`` uses seqeval's default (conlleval-compatible, lenient about a stray ``I-``
    starting an entity); ``"IOBES"`` (alias ``"BIOES"``) uses strict mode, where only
    well-formed spans count.
    """
    scheme_u = scheme.upper()
    if scheme_u not in ("BIO", "IOB2", "IOBES", "BIOES"):
        raise ValueError(f"unknown tagging scheme {scheme!r}; use 'BIO' or 'IOBES'")
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(pred_tags)} predicted sequences for {len(true_tags)} gold")
    for i, (t, q) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(q):
            raise ValueError(f"sequence {i}: {len(q)} predicted tags for {len(t)} gold tags")

    zero: dict[str, Any] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    if not any(true_tags) and not any(pred_tags):
        return zero

    # seqeval pulls in sklearn; import only when entity scores are asked for.
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOBES

    kwargs: dict[str, Any] = {"mode": None, "scheme": None}
    if scheme_u in ("IOBES", "BIOES"):
        kwargs = {"mode": "strict", "scheme": IOBES}
    with warnings.catch_warnings():
        # With no entity anywhere seqeval averages an empty array for the weighted average
        # (dropped below) and numpy warns; the micro scores are well defined (0).
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(
            [list(s) for s in true_tags],
            [list(s) for s in pred_tags],
            output_dict=True,
            zero_division=0,
            **kwargs,
        )
    micro = report.pop("micro avg", None)
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in sorted(report.items())
    }
    if micro is None:
        return {**zero, "per_type": per_type}
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "per_type": per_type,
    }


# --------------------------------------------------------------------------- SQuAD EM/F1


def _is_cjk(ch: str) -> bool:
    """Han ideographs and kana: scripts written without spaces between words."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x3040 <= cp <= 0x30FF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2EBEF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _cjk_punctuation() -> frozenset[str]:
    # CJK Symbols and Punctuation, CJK compatibility forms, half/full-width forms, plus the
    # typographic marks Chinese text uses (the CMRC2018 evaluator strips these too).
    chars = {"“", "”", "‘", "’", "…", "—", "·", "–"}  # noqa: RUF001
    for lo, hi in ((0x3000, 0x303F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF)):
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch).startswith("P"):
                chars.add(ch)
    return frozenset(chars)


_PUNCT = frozenset(string.punctuation) | _cjk_punctuation()
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _segment(text: str) -> list[str]:
    """Whitespace words, with every CJK character split off as its own token."""
    tokens: list[str] = []
    for word in text.split():
        buf = ""
        for ch in word:
            if _is_cjk(ch):
                if buf:
                    tokens.append(buf)
                    buf = ""
                tokens.append(ch)
            else:
                buf += ch
        if buf:
            tokens.append(buf)
    return tokens


def squad_normalize(s: str) -> str:
    """Official SQuAD v1.1 ``normalize_answer`` plus CJK handling.

    Lower-case, drop punctuation (ASCII and Chinese), drop the articles a/an/the, collapse
    whitespace. CJK characters come out space-separated so that "巴黎铁塔" and "巴黎 铁塔"
    compare equal; on text without CJK characters the result is the official one.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(_segment(s))


def _f1(pred: str, gold: str) -> float:
    pred_toks = squad_normalize(pred).split()
    gold_toks = squad_normalize(gold).split()
    if not pred_toks or not gold_toks:
        # v1.1 scores empty-vs-empty as 0; v2.0 (unanswerable questions) as 1. Take v2.0.
        return float(pred_toks == gold_toks)
    common = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_toks)
    recall = common / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Mean exact match and token F1 (fractions in 0..1), each the max over gold answers.

    Every question in ``references`` counts; one without a prediction scores 0. A question
    with an empty gold list is treated as unanswerable (gold ``""``).
    """
    em_sum = f1_sum = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        pred = predictions[qid]
        golds = list(golds) or [""]
        norm_pred = squad_normalize(pred)
        em_sum += max(float(norm_pred == squad_normalize(g)) for g in golds)
        f1_sum += max(_f1(pred, g) for g in golds)
    n = len(references)
    return {
        "em": em_sum / n if n else 0.0,
        "f1": f1_sum / n if n else 0.0,
        "count": float(n),
    }
