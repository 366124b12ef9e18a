"""Raw text in, task answers out, through any Predictor (ONNX, int8, torch, checkpoint).

Shared by ``predict`` and ``serve`` so both tokenise, batch and decode the same way; the
MRC answer search (:func:`best_answers`) is shared with evaluation, so the metric scores
exactly the answers a deployed model returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import E2EError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def tokenizer_dir(predictor: Any) -> Path:
    """The export folder holds the tokenizer; a checkpoint predictor names its source."""
    folder = getattr(predictor, "export_dir", None)
    if folder is not None and (Path(folder) / "tokenizer_config.json").is_file():
        return Path(folder)
    source = predictor.deploy.get("tokenizer_source")
    if source:
        return Path(source)
    raise E2EError(f"no tokenizer files in {folder}; re-export the model")


def entity_spans(tokens: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """BIO/IOBES tags -> entities with word spans (end exclusive)."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = []
    for etype, start, end in get_entities(tags):
        words = tokens[start : end + 1]
        joiner = "" if all(len(w) == 1 and ord(w) > 0x2E80 for w in words) else " "
        out.append({"type": etype, "text": joiner.join(words), "start": start, "end": end + 1})
    return out


# -- MRC answers across overlapping windows --------------------------------------------------
# A context longer than the encoder's window is split into several overlapping features; the
# answer is the best-scoring valid span over all of an example's features (the HF ``run_qa``
# post-processing). Spans are scored ``start_logit + end_logit`` and only the top ``n_best``
# start and end positions of each feature are paired, which keeps the search O(n_best^2) per
# window instead of O(L^2).
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


class TextRunner:
    def __init__(self, predictor: Any, batch_size: int = 32) -> None:
        from e2ekit.text.models import load_tokenizer

        self.predictor = predictor
        self.deploy = predictor.deploy
        self.task = self.deploy["task"]
        self.labels: list[str] = list(self.deploy.get("labels") or [])
        self.tokenizer = load_tokenizer(tokenizer_dir(predictor))
        self.batch_size = batch_size
        self.pad_id = int(self.deploy.get("pad_token_id", 0))
        crf = self.deploy.get("crf")
        self.crf = {k: np.asarray(v, dtype=np.float32) for k, v in crf.items()} if crf else None

    # -- model calls ---------------------------------------------------------------------------
    def _run(self, feats: list[dict]) -> list[dict[str, np.ndarray]]:
        """Per-feature outputs (length-trimmed), batched by similar length."""
        from e2ekit.text.data import pad_batch

        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        results: list[dict[str, np.ndarray]] = [{}] * len(feats)
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            batch = pad_batch([feats[i] for i in idx], self.pad_id)
            out = self.predictor.run({k: batch[k].numpy().astype(np.int64) for k in INPUTS})
            for row, i in enumerate(idx):
                n = len(feats[i]["input_ids"])
                results[i] = {
                    k: v[row, :n] if v.ndim > 2 or k != "logits" else v[row] for k, v in out.items()
                }
        return results

    # -- tasks ------------------------------------------------------------------------------
    def class_logits(self, items: Sequence[str | tuple[str, str]]) -> np.ndarray:
        """cls/pair logits, (len(items), labels) float32: what a distillation teacher gives."""
        from e2ekit.text.data import encode_text

        feats, _ = encode_text(
            text_examples(items), self.tokenizer, None, int(self.deploy["max_seq_len"])
        )
        rows = [r["logits"] for r in self._run(feats)]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(self.labels)))

    def classify(self, items: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
        from e2ekit.text.data import encode_text

        examples = text_examples(items)
        feats, _ = encode_text(examples, self.tokenizer, None, int(self.deploy["max_seq_len"]))
        out = []
        for ex, res in zip(examples, self._run(feats), strict=True):
            probs = softmax(res["logits"].astype(np.float64))
            k = int(probs.argmax())
            row: dict[str, Any] = {"text_a": ex.text_a}
            if ex.text_b is not None:
                row["text_b"] = ex.text_b
            row |= {
                "label": self.labels[k],
                "score": round(float(probs[k]), 6),
                "scores": {n: round(float(p), 6) for n, p in zip(self.labels, probs, strict=True)},
            }
            out.append(row)
        return out

    def tag(self, texts: Sequence[str | list[str]]) -> list[dict[str, Any]]:
        """Raw texts (split into words here) or sentences already split into words."""
        from e2ekit.text.data import NerExample, encode_ner, split_words
        from e2ekit.text.models import viterbi_decode_numpy

        examples = [
            NerExample(list(t) if isinstance(t, list) else split_words(t), None, n)
            for n, t in enumerate(texts, 1)
        ]
        texts = [" ".join(t) if isinstance(t, list) else t for t in texts]
        feats, _ = encode_ner(examples, self.tokenizer, None, int(self.deploy["max_seq_len"]))
        out = []
        for text, ex, feat, res in zip(texts, examples, feats, self._run(feats), strict=True):
            em = res["emissions"]
            first, prev = [], -1
            for j, w in enumerate(feat["word_ids"]):
                if w >= 0 and w != prev:
                    first.append(j)
                prev = w
            word_em = em[first] if first else em[:0]
            if self.crf is not None and len(first):
                ids = viterbi_decode_numpy(
                    word_em[None],
                    np.ones((1, len(first)), dtype=bool),
                    self.crf["start"],
                    self.crf["end"],
                    self.crf["transitions"],
                )[0]
            else:
                ids = word_em.argmax(-1).tolist()
            tags = [self.labels[i] for i in ids] + ["O"] * (len(ex.tokens) - len(ids))
            out.append(
                {
                    "text": text,
                    "tokens": ex.tokens,
                    "tags": tags,
                    "entities": entity_spans(ex.tokens, tags),
                }
            )
        return out

    def answer(self, examples: Sequence[Any]) -> list[dict[str, Any]]:
        from e2ekit.text.data import encode_mrc

        d = self.deploy
        feats, _ = encode_mrc(
            list(examples),
            self.tokenizer,
            int(d["max_seq_len"]),
            int(d["doc_stride"]),
            int(d["max_query_length"]),
            False,
        )
        res = self._run(feats)
        best, nbest = best_answers(
            examples,
            feats,
            [r["start_logits"] for r in res],
            [r["end_logits"] for r in res],
            n_best=int(d["n_best"]),
            max_answer_length=int(d["max_answer_length"]),
        )
        out = []
        for ex in examples:
            b = best[ex.qid]
            score = float(b["score"])
            prob = nbest[ex.qid][0]["prob"] if nbest.get(ex.qid) else 0.0
            out.append(
                {
                    "id": ex.qid,
                    "question": ex.question,
                    "answer": b["text"],
                    "start": b["start"],
                    "end": b["end"],
                    "score": round(score, 4) if np.isfinite(score) else None,
                    "prob": round(float(prob), 6),
                }
            )
        return out

    def run_items(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        if self.task in ("cls", "pair"):
            return self.classify(items)
        if self.task == "ner":
            return self.tag(items)
        return self.answer(items)


def text_examples(items: Sequence[str | tuple[str, str]]) -> list[Any]:
    """Raw cls texts or (text_a, text_b) pairs as numbered, unlabelled ``TextExample`` rows."""
    from e2ekit.text.data import TextExample

    return [
        TextExample(it[0], it[1], None, n)
        if isinstance(it, tuple)
        else TextExample(it, None, None, n)
        for n, it in enumerate(items, 1)
    ]


def chunked(xs: Iterable[Any], n: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for x in xs:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
