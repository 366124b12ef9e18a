"""Tokenize once, then batch by length: each batch is padded only to its own longest input.

Sorting by token count before batching keeps padding (wasted compute) small when inputs
vary in length; the caller scatters each batch's rows back to their input positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch", "Tokenized", "WordPieces", "check_inputs", "length_batches"]


@dataclass(frozen=True)
class Batch:
    """Rows ``index`` of the input, as int64 model feeds padded to the batch's longest."""

    index: np.ndarray
    feeds: dict[str, np.ndarray]


@dataclass(frozen=True)
class Tokenized:
    """Token ids per input (special tokens included, truncated) and which inputs were cut."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    tokens: list[list[str]]
    cut: list[int]

    @property
    def truncated(self) -> int:
        return len(self.cut)


def check_inputs(texts: Any, *, is_tokenized: bool) -> list[Any]:
    """The inputs as a list; a wrong item raises TypeError naming its index."""
    if isinstance(texts, str) and not is_tokenized:
        return [texts]
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        want = "a list of word lists" if is_tokenized else "a string or a list of strings"
        raise TypeError(f"encode() takes {want}, got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not is_tokenized:
            if not isinstance(item, str):
                raise TypeError(f"input {i} is {type(item).__name__}, not str")
            continue
        if isinstance(item, str) or not isinstance(item, Sequence):
            raise TypeError(
                f"input {i} is {type(item).__name__}; with is_tokenized=True each input is "
                "a list of words (str)"
            )
        bad = next((j for j, w in enumerate(item) if not isinstance(w, str)), None)
        if bad is not None:
            raise TypeError(f"input {i}, word {bad} is {type(item[bad]).__name__}, not str")
    return items


class WordPieces:
    """A folder's fast tokenizer set to truncate at ``max_length`` and never pad.

    The Rust tokenizer keeps what truncation cut in ``Encoding.overflowing``, which is how
    truncated inputs are counted without tokenizing anything twice.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.backend.no_padding()
        self.backend.enable_truncation(max_length=max_length)
        self.max_length = max_length
        pad_id = tokenizer.pad_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0

    def __call__(self, items: list[Any], *, is_tokenized: bool) -> Tokenized:
        if not items:
            return Tokenized([], [], [], [])
        encs = self.backend.encode_batch(
            [list(i) for i in items] if is_tokenized else items, is_pretokenized=is_tokenized
        )
        return Tokenized(
            ids=[e.ids for e in encs],
            type_ids=[e.type_ids for e in encs],
            tokens=[e.tokens for e in encs],
            cut=[i for i, e in enumerate(encs) if e.overflowing],
        )


def length_batches(
    tok: Tokenized, batch_size: int, pad_id: int, input_names: Sequence[str]
) -> Iterator[Batch]:
    """Batches of ``batch_size`` inputs, longest first, each padded to its own longest."""
    lengths = np.array([len(ids) for ids in tok.ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = int(lengths[index].max())
        ids = np.full((len(index), width), pad_id, dtype=np.int64)
        types = np.zeros((len(index), width), dtype=np.int64)
        mask = np.zeros((len(index), width), dtype=np.int64)
        for row, i in enumerate(index):
            n = int(lengths[i])
            ids[row, :n] = tok.ids[i]
            types[row, :n] = tok.type_ids[i]
            mask[row, :n] = 1
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        yield Batch(index, {name: columns[name] for name in input_names})
