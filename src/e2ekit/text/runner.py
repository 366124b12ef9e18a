"""Raw text in, task answers out, through any Predictor (ONNX, int8, torch, checkpoint).

Shared by ``predict`` and ``serve`` so both tokenise, batch and decode the same way.
"""

from __future__ import annotations

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


class TextRunner:
    def __init__(self, predictor: Any, batch_size: int = 32) -> None:
        from e2ekit.text.pretrained import load_tokenizer

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
    def classify(self, items: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
        from e2ekit.text.data import TextExample, encode_text

        examples = [
            TextExample(it[0], it[1], None, n)
            if isinstance(it, tuple)
            else TextExample(it, None, None, n)
            for n, it in enumerate(items, 1)
        ]
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

    def tag(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        from e2ekit.text.crf import viterbi_decode_numpy
        from e2ekit.text.data import NerExample, encode_ner, split_words

        examples = [NerExample(split_words(t), None, n) for n, t in enumerate(texts, 1)]
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
        from e2ekit.text.mrc_post import best_answers

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


def chunked(xs: Iterable[Any], n: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for x in xs:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf
