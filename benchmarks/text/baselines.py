"""Floor baselines a text-classification fine-tune must beat: majority class and BoW + LR.

Why: a fine-tuned encoder that does not clearly beat a bag-of-words logistic regression on
the same split is not learning anything the encoder is needed for (or the data is broken).
The BoW model uses word uni+bigrams, or character 1-2 grams when the text contains CJK
characters (no spaces to split words on); C comes from a small grid by 3-fold CV on train.

Usage::

    python benchmarks/text/baselines.py --train TRAIN.tsv --dev DEV.tsv

The TSV has a header naming ``text_a``, optional ``text_b`` and ``label`` (tab-separated,
no quoting); pairs are joined as ``text_a [SEP] text_b``. Prints one JSON line on stdout.
The reader is standalone on purpose, so the script runs against any checkout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bow_baseline", "majority_baseline", "read_tsv"]

C_GRID = (0.1, 1.0, 10.0)


def _has_cjk(text: str) -> bool:
    return any(0x4E00 <= ord(ch) <= 0x9FFF or 0x3400 <= ord(ch) <= 0x4DBF for ch in text)


def majority_baseline(train_labels: Sequence[Hashable], dev_labels: Sequence[Hashable]) -> float:
    """Dev accuracy of always predicting the most frequent train label."""
    if not train_labels or not dev_labels:
        return 0.0
    top = Counter(train_labels).most_common(1)[0][0]
    return sum(y == top for y in dev_labels) / len(dev_labels)


def bow_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[Hashable],
    dev_texts: Sequence[str],
    dev_labels: Sequence[Hashable],
    *,
    positive: Hashable | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """TF-IDF n-grams + logistic regression; dev accuracy and F1.

    F1 is macro over classes, or binary F1 of ``positive`` when given (as the pair task
    reports it). Returns ``{"accuracy", "f1", "C", "analyzer"}``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    cjk = sum(_has_cjk(t) for t in train_texts) * 2 > len(train_texts)
    if cjk:
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    else:
        vec = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    analyzer = "char1-2" if cjk else "word1-2"

    counts = Counter(train_labels)
    best_c: float | None = None
    if len(counts) < 2:  # nothing to fit: the classifier degenerates to the majority class
        top = next(iter(counts)) if counts else None
        pred: list[Any] = [top] * len(dev_labels)
    else:
        pipe = Pipeline([("vec", vec), ("lr", LogisticRegression(max_iter=1000))])
        folds = min(3, min(counts.values()))
        if folds >= 2:
            search = GridSearchCV(
                pipe,
                {"lr__C": list(C_GRID)},
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                n_jobs=1,
            )
            search.fit(list(train_texts), list(train_labels))
            model = search.best_estimator_
            best_c = float(search.best_params_["lr__C"])
        else:  # a class with one example: CV impossible, use the default C
            model = pipe.fit(list(train_texts), list(train_labels))
            best_c = 1.0
        pred = list(model.predict(list(dev_texts)))

    if not dev_labels:
        return {"accuracy": 0.0, "f1": 0.0, "C": best_c, "analyzer": analyzer}
    y = list(dev_labels)
    if positive is not None:
        f1 = f1_score(y, pred, labels=[positive], average="micro", zero_division=0)
    else:
        f1 = f1_score(y, pred, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1),
        "C": best_c,
        "analyzer": analyzer,
    }


def read_tsv(path: str | Path) -> tuple[list[str], list[str], bool]:
    """(texts, labels, is_pair) from a header-named TSV; pairs joined with `` [SEP] ``."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        col = {name.strip(): i for i, name in enumerate(header)}
        for need in ("text_a", "label"):
            if need not in col:
                raise ValueError(f"{path}: header {header} lacks column {need!r}")
        ia, il, ib = col["text_a"], col["label"], col.get("text_b")
        texts: list[str] = []
        labels: list[str] = []
        for lineno, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise ValueError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            text = row[ia] if ib is None else f"{row[ia]} [SEP] {row[ib]}"
            texts.append(text)
            labels.append(row[il].strip())
    return texts, labels, ib is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="train TSV (text_a[, text_b], label)")
    ap.add_argument("--dev", required=True, help="dev TSV with the same columns")
    ap.add_argument(
        "--positive",
        default=None,
        help="label scored by binary F1 (default: '1' for pair data, else macro F1)",
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train_x, train_y, pair = read_tsv(args.train)
    dev_x, dev_y, _ = read_tsv(args.dev)
    positive = args.positive
    if positive is None and pair and "1" in set(train_y):
        positive = "1"
    majority = majority_baseline(train_y, dev_y)
    bow = bow_baseline(train_x, train_y, dev_x, dev_y, positive=positive)
    out = {
        "task": "cls-baselines",
        "train": len(train_y),
        "dev": len(dev_y),
        "majority_acc": round(majority, 4),
        "bow_acc": round(bow["accuracy"], 4),
        "bow_f1": round(bow["f1"], 4),
        "bow_C": bow["C"],
        "bow_analyzer": bow["analyzer"],
        "f1_kind": f"binary:{positive}" if positive is not None else "macro",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
