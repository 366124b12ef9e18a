"""Turn examples into model features (dicts of python lists) and pad them into batches.

Features stay unpadded lists so a collate can pad each batch to its own longest
sequence (dynamic padding), which is much cheaper than padding all to max_seq_len.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from e2ekit.core.errors import ConfigError, DataError, did_you_mean
from e2ekit.text.data.readers import MrcExample, NerExample, TextExample

T = TypeVar("T")
CHUNK = 1024  # examples per tokenizer call: fast batching without a huge peak in memory
SCALAR_KEYS = ("label", "start_position", "end_position")


@dataclass
class TruncationStats:
    """How many examples lost tokens to ``max_seq_len``, so the user can pick a better one."""

    total: int = 0
    truncated: int = 0  # cls/pair/ner: tokens cut; mrc: examples needing more than one window
    max_seq_len: int = 0
    windows: int = 0  # mrc only: number of features (windows) produced
    unk_words: int = 0  # ner only: words with no sub-token, encoded as the unknown token

    def summary(self, what: str) -> str:
        """One log line, e.g. 'train: 12 of 400 examples (3.0%) truncated to max_seq_len=128'."""
        pct = 100.0 * self.truncated / self.total if self.total else 0.0
        head = f"{what}: {self.truncated} of {self.total} examples ({pct:.1f}%)"
        if self.windows:
            text = (
                f"{head} need more than one window of max_seq_len={self.max_seq_len} "
                f"({self.windows} features)"
            )
        else:
            text = f"{head} truncated to max_seq_len={self.max_seq_len}"
        if self.unk_words:
            text += f"; {self.unk_words} words had no sub-token and were encoded as unknown"
        return text


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[tuple[int, Sequence[T]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _label_id(index: dict[str, int], value: str, line: int, source: str | Path) -> int:
    """The id of a label, or a DataError that says how to fix the unknown one."""
    try:
        return index[value]
    except KeyError:
        names = list(index)
        raise DataError(
            f"{source}:{line}: unknown label '{value}'{did_you_mean(value, names)}; known "
            f"labels: {', '.join(names[:30])}; add it to task.labels or fix the row"
        ) from None


def encode_text(
    examples: list[TextExample],
    tokenizer: Any,
    label_names: list[str] | None,
    max_seq_len: int,
    *,
    source: str | Path = "data",
) -> tuple[list[dict], TruncationStats]:
    """Tokenize cls/pair examples; pairs are cut ``longest_first`` to fit ``max_seq_len``.

    ``source`` only names the file in error messages.
    """
    stats = TruncationStats(total=len(examples), max_seq_len=max_seq_len)
    index = {n: i for i, n in enumerate(label_names)} if label_names else None
    pair = any(ex.text_b is not None for ex in examples)
    features: list[dict] = []
    for _, chunk in _chunks(examples):
        a = [ex.text_a for ex in chunk]
        b = [ex.text_b or "" for ex in chunk] if pair else None
        # Untruncated first: most examples fit, and the full length tells us who was cut.
        enc = tokenizer(
            a, b, return_token_type_ids=True, return_attention_mask=False, verbose=False
        )
        long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_seq_len]
        cut: dict[int, tuple[list[int], list[int]]] = {}
        if long:
            stats.truncated += len(long)
            sub = tokenizer(
                [a[i] for i in long],
                [b[i] for i in long] if b is not None else None,
                truncation="longest_first" if pair else True,
                max_length=max_seq_len,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            cut = {i: (sub["input_ids"][k], sub["token_type_ids"][k]) for k, i in enumerate(long)}
        for i, ex in enumerate(chunk):
            ids, types = cut.get(i, (enc["input_ids"][i], enc["token_type_ids"][i]))
            feat: dict = {"input_ids": list(ids), "token_type_ids": list(types)}
            if index is not None and ex.label is not None:
                feat["label"] = _label_id(index, ex.label, ex.line, source)
            features.append(feat)
    return features, stats


def encode_ner(
    examples: list[NerExample],
    tokenizer: Any,
    tag_names: list[str] | None,
    max_seq_len: int,
    *,
    source: str | Path = "data",
) -> tuple[list[dict], TruncationStats]:
    """Tokenize pre-split words; the tag goes on each word's first sub-token, -100 elsewhere.

    A word the tokenizer drops entirely (control or zero-width characters) is replaced by
    the unknown token, so every word keeps a position and gets a prediction back.
    """
    stats = TruncationStats(total=len(examples), max_seq_len=max_seq_len)
    index = {n: i for i, n in enumerate(tag_names)} if tag_names else None
    unk = tokenizer.unk_token
    features: list[dict] = []

    def encode(words: list[list[str]]) -> Any:
        return tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=max_seq_len,
            return_token_type_ids=True,
            return_attention_mask=False,
        )

    for _, chunk in _chunks(examples):
        enc = encode([ex.tokens for ex in chunk])
        for i, ex in enumerate(chunk):
            ids, types, wids = enc["input_ids"][i], enc["token_type_ids"][i], enc.word_ids(i)
            kept = {w for w in wids if w is not None}
            if len(kept) < len(ex.tokens) and unk is not None:
                missing = [k for k in range(len(ex.tokens)) if k not in kept]
                probe = tokenizer(
                    [ex.tokens[k] for k in missing], add_special_tokens=False, verbose=False
                )["input_ids"]
                blank = [k for k, p in zip(missing, probe, strict=True) if not p]
                if blank:
                    stats.unk_words += len(blank)
                    words = [unk if k in blank else w for k, w in enumerate(ex.tokens)]
                    again = encode([words])
                    ids, types, wids = (
                        again["input_ids"][0],
                        again["token_type_ids"][0],
                        again.word_ids(0),
                    )
                    kept = {w for w in wids if w is not None}
            if len(kept) < len(ex.tokens):
                stats.truncated += 1
            word_ids = [-1 if w is None else w for w in wids]
            feat: dict = {
                "input_ids": list(ids),
                "token_type_ids": list(types),
                "word_ids": word_ids,
                "num_words": len(ex.tokens),
            }
            if index is not None and ex.tags is not None:
                tag_ids = [_label_id(index, t, ex.line, source) for t in ex.tags]
                labels, prev = [], -1
                for w in word_ids:
                    labels.append(tag_ids[w] if w >= 0 and w != prev else -100)
                    prev = w
                feat["labels"] = labels
            features.append(feat)
    return features, stats


def encode_mrc(
    examples: list[MrcExample],
    tokenizer: Any,
    max_seq_len: int,
    doc_stride: int,
    max_query_length: int,
    training: bool,
) -> tuple[list[dict], TruncationStats]:
    """Split each (question, context) into overlapping windows, HF/BERT SQuAD style.

    ``doc_stride`` is the token overlap between consecutive windows. In training, a window
    that does not fully contain the (first) answer points start/end at index 0 (CLS).
    """
    room = max_seq_len - max_query_length - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= doc_stride:
        raise ConfigError(
            f"doc_stride={doc_stride} leaves no new context per window: max_seq_len="
            f"{max_seq_len} minus max_query_length={max_query_length} and special tokens is "
            f"{room}; lower doc_stride or max_query_length, or raise max_seq_len"
        )
    stats = TruncationStats(total=len(examples), max_seq_len=max_seq_len)
    features: list[dict] = []
    for start, chunk in _chunks(examples):
        questions = [ex.question.lstrip() for ex in chunk]
        qenc = tokenizer(
            questions, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        for i, offs in enumerate(qenc["offset_mapping"]):
            if len(offs) > max_query_length:
                questions[i] = questions[i][: offs[max_query_length - 1][1]]
        enc = tokenizer(
            questions,
            [ex.context for ex in chunk],
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        mapping = enc["overflow_to_sample_mapping"]
        counts: dict[int, int] = {}
        for j, i in enumerate(mapping):
            counts[i] = counts.get(i, 0) + 1
            seq = enc.sequence_ids(j)
            offsets = [
                [int(o[0]), int(o[1])] if s == 1 else None
                for o, s in zip(enc["offset_mapping"][j], seq, strict=True)
            ]
            feat: dict = {
                "input_ids": list(enc["input_ids"][j]),
                "token_type_ids": list(enc["token_type_ids"][j]),
                "example_index": start + i,
                "offsets": offsets,
            }
            if training:
                feat["start_position"], feat["end_position"] = _answer_tokens(chunk[i], offsets)
            features.append(feat)
        stats.truncated += sum(1 for n in counts.values() if n > 1)
    stats.windows = len(features)
    return features, stats


def _answer_tokens(ex: MrcExample, offsets: list[list[int] | None]) -> tuple[int, int]:
    """Token (start, end) of the first answer in this window, or (0, 0) if not fully inside."""
    ctx = [k for k, o in enumerate(offsets) if o is not None]
    if not ex.answers or not ctx:
        return 0, 0
    start_char = ex.answers[0]["answer_start"]
    end_char = start_char + len(ex.answers[0]["text"])
    first, last = ctx[0], ctx[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    s = first
    while s <= last and offsets[s][0] <= start_char:
        s += 1
    e = last
    while e >= first and offsets[e][1] >= end_char:
        e -= 1
    return s - 1, e + 1


def pad_batch(
    features: list[dict], pad_id: int, keys: tuple[str, ...] = ("input_ids", "token_type_ids")
) -> dict[str, Any]:
    """Pad a batch to its longest sequence and build the attention mask.

    ``keys`` are padded (``input_ids`` with ``pad_id``, others with 0), ``labels`` with
    -100 (ignored by the loss); scalar targets become int64 tensors; anything else
    (word_ids, offsets, example_index, num_words) passes through as python lists.
    """
    if not features:
        raise ValueError("pad_batch needs at least one feature")
    longest = max(len(f["input_ids"]) for f in features)
    out: dict[str, Any] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if key in keys or key == "labels":
            fill = pad_id if key == "input_ids" else -100 if key == "labels" else 0
            rows = [list(v) + [fill] * (longest - len(v)) for v in values]
            out[key] = torch.tensor(rows, dtype=torch.long)
        elif key in SCALAR_KEYS:
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    mask = [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
    out["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    return out


def lengths(features: Sequence[dict]) -> list[int]:
    """Sequence length per feature, for length-bucketed batching."""
    return [len(f["input_ids"]) for f in features]
