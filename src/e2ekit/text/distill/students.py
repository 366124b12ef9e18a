"""Tiny students (bag of words, CNN, BiLSTM) distilled from a fine-tuned text encoder.

Each student is served like a fine-tuned encoder export: it takes ``input_ids``,
``attention_mask`` and ``token_type_ids`` ([batch, sequence], right-padded as ``pad_batch``
pads them) and returns ``logits`` [batch, num_labels]. Every op is chosen so a row's logits
do not depend on the other rows of its batch or on its right padding, and so the graph
exports to ONNX with dynamic batch and sequence axes (no packed sequences).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from e2ekit.core.errors import ConfigError, did_you_mean

STUDENT_KINDS = ("bow", "cnn", "bilstm")


@dataclass(frozen=True)
class StudentSpec:
    """Everything needed to rebuild a student (the export's builder config)."""

    kind: str  # one of STUDENT_KINDS
    vocab_size: int
    num_labels: int
    pair: bool = False  # two segments (token_type_ids 0/1)
    embed_dim: int = 128
    hidden: int = 256  # MLP width (bow), channels per kernel (cnn), LSTM units per direction
    kernel_sizes: tuple[int, ...] = (2, 3, 4)
    dropout: float = 0.1
    pad_id: int = 0

    def __post_init__(self) -> None:
        # A YAML config gives kernel_sizes as a list; keep the spec hashable.
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        _check_spec(self)


def _check_spec(spec: StudentSpec) -> None:
    """Refuse a spec that would fail later inside torch with a less helpful message."""
    if spec.kind not in STUDENT_KINDS:
        raise ConfigError(
            f"distill.students: unknown student '{spec.kind}'"
            f"{did_you_mean(spec.kind, STUDENT_KINDS)}; choose from {', '.join(STUDENT_KINDS)}"
        )
    for key in ("embed_dim", "hidden"):
        if int(getattr(spec, key)) < 1:
            raise ConfigError(f"distill.student.{key}: {getattr(spec, key)} must be >= 1")
    if not spec.kernel_sizes or min(spec.kernel_sizes) < 1:
        raise ConfigError(
            f"distill.student.kernel_sizes: {list(spec.kernel_sizes)} must be a non-empty list "
            "of widths >= 1, e.g. [2, 3, 4]"
        )
    if not 0.0 <= spec.dropout < 1.0:
        raise ConfigError(f"distill.student.dropout: {spec.dropout} must be in [0, 1)")
    if spec.vocab_size < 1 or spec.num_labels < 1:
        raise ConfigError(
            f"a student needs vocab_size >= 1 and num_labels >= 1, got {spec.vocab_size} and "
            f"{spec.num_labels}; check the tokenizer and the task's labels"
        )
    if not 0 <= spec.pad_id < spec.vocab_size:
        raise ConfigError(
            f"student pad_id {spec.pad_id} is outside the vocabulary (size {spec.vocab_size}); "
            "use the tokenizer's pad_token_id"
        )


# -- masks and pooling shared by the students --------------------------------------------------
def _valid(attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
    """Positions that hold tokens, as bool [B, L].

    ``token_type_ids >= 0`` is always true; reading it keeps the input in a single-segment
    student's exported graph, which must take the same three inputs as every text export.
    """
    return (attention_mask > 0) & (token_type_ids >= 0)


def _positions(x: Tensor, length: int | Tensor) -> Tensor:
    """0..length-1 as int64 [1, length], traced from a shape so the sequence axis stays dynamic."""
    return torch.arange(length, device=x.device, dtype=torch.long).unsqueeze(0)


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``h`` [B, L, D] over the positions where ``mask`` [B, L] holds (0 if none)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max of ``h`` [B, L, D] over the positions where ``mask`` holds (0 if none)."""
    top = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
    some = mask.sum(1, keepdim=True) > 0
    return torch.where(some, top, torch.zeros_like(top))


def _mlp(d_in: int, hidden: int, num_labels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels)
    )


class _Student(nn.Module):
    """The word embedding and the segment handling every student shares."""

    def __init__(self, spec: StudentSpec, *, segments: bool) -> None:
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embed_dim, padding_idx=spec.pad_id)
        self.segment = nn.Embedding(2, spec.embed_dim) if segments else None

    def _embed(self, input_ids: Tensor, token_type_ids: Tensor, mask: Tensor) -> Tensor:
        """Word (+ segment) embeddings [B, L, E], zero at padded positions."""
        x = self.embedding(input_ids)
        if self.segment is not None:
            x = x + self.segment(token_type_ids.clamp(0, 1))
        return x * mask.to(x.dtype).unsqueeze(-1)


class BowStudent(_Student):
    """Mean of word embeddings -> MLP; a pair compares the two segments' means."""

    def __init__(self, spec: StudentSpec) -> None:
        # A bag of words keeps a pair's segments apart by pooling them separately.
        super().__init__(spec, segments=False)
        d_in = spec.embed_dim * (4 if spec.pair else 1)
        self.head = _mlp(d_in, spec.hidden, spec.num_labels, spec.dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        mask = _valid(attention_mask, token_type_ids)
        x = self.embedding(input_ids)
        if not self.spec.pair:
            return self.head(_masked_mean(x, mask))
        a = _masked_mean(x, mask & (token_type_ids == 0))
        b = _masked_mean(x, mask & (token_type_ids == 1))
        return self.head(torch.cat([a, b, (a - b).abs(), a * b], dim=-1))


class CnnStudent(_Student):
    """Full 1-D convolutions of several widths, max over each row's own windows (Kim 2014)."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__(spec, segments=spec.pair)
        self.convs = nn.ModuleList(
            nn.Conv1d(spec.embed_dim, spec.hidden, k, padding=k - 1) for k in spec.kernel_sizes
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.out = nn.Linear(spec.hidden * len(spec.kernel_sizes), spec.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        mask = _valid(attention_mask, token_type_ids)
        # Padded positions are zero, like the convolution's own padding, so a window that
        # reaches into the right padding sees what it sees at batch size 1.
        x = self._embed(input_ids, token_type_ids, mask).transpose(1, 2)
        n = mask.sum(1, keepdim=True).clamp(min=1)  # [B, 1]; clamp keeps one window when empty
        pooled = []
        for k, conv in zip(self.spec.kernel_sizes, self.convs, strict=True):
            h = torch.relu(conv(x))  # [B, C, L + k - 1]
            t = _positions(h, h.shape[-1])
            pooled.append(_masked_max(h.transpose(1, 2), t < n + (k - 1)))
        return self.out(self.dropout(torch.cat(pooled, dim=-1)))


class BiLstmStudent(_Student):
    """Forward and within-length-reversed LSTMs, max + mean pooled (Tang et al. 2019)."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__(spec, segments=spec.pair)
        self.fwd = nn.LSTM(spec.embed_dim, spec.hidden, batch_first=True)
        self.bwd = nn.LSTM(spec.embed_dim, spec.hidden, batch_first=True)
        self.head = _mlp(4 * spec.hidden, spec.hidden, spec.num_labels, spec.dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        mask = _valid(attention_mask, token_type_ids)
        x = self._embed(input_ids, token_type_ids, mask)
        rev = _reverse_index(mask)
        fwd, _ = self.fwd(x)
        bwd, _ = self.bwd(_gather_time(x, rev))
        h = torch.cat([fwd, _gather_time(bwd, rev)], dim=-1)  # the reversal is its own inverse
        return self.head(torch.cat([_masked_max(h, mask), _masked_mean(h, mask)], dim=-1))


def _reverse_index(mask: Tensor) -> Tensor:
    """Time index [B, L] that reverses each row's first ``length`` steps and keeps its padding.

    A gather with it replaces ``pack_padded_sequence``: the backward LSTM starts at each row's
    last token, so its states never see padding, and the graph exports to ONNX.
    """
    n = mask.sum(1, keepdim=True)  # [B, 1]
    t = _positions(mask, mask.shape[1])
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for x [B, L, D]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


_KINDS: dict[str, type[_Student]] = {"bow": BowStudent, "cnn": CnnStudent, "bilstm": BiLstmStudent}


def build_student(spec: StudentSpec) -> nn.Module:
    """A fresh student: ``forward(input_ids, attention_mask, token_type_ids) -> logits``."""
    return _KINDS[spec.kind](spec)


def student_from_config(**config: Any) -> nn.Module:
    """``build_student`` from plain keyword values (a saved config, an export's builder)."""
    return build_student(StudentSpec(**config))


def init_embeddings(
    model: nn.Module, vocab: dict[str, int], words: list[str], vectors: np.ndarray
) -> int:
    """Copy pretrained word vectors into the student's embedding; the rows set.

    Pretrained vectors give a student trained on little data a head start (Tang et al. use
    word2vec). A vocabulary word takes the vector of the same word, else of its lowercase
    form (pretrained cased vectors still serve a lowercasing tokenizer). The padding row
    stays zero.
    """
    emb: nn.Embedding = model.embedding  # type: ignore[assignment]
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(
            f"vectors must be [len(words), dim] = [{len(words)}, dim], got {list(vectors.shape)}"
        )
    if vectors.shape[1] != emb.embedding_dim:
        raise ValueError(
            f"pretrained vectors have dim {vectors.shape[1]} but the student's embed_dim is "
            f"{emb.embedding_dim}; set embed_dim to {vectors.shape[1]}"
        )
    exact = {w: i for i, w in reversed(list(enumerate(words)))}  # first occurrence wins
    lower = {w.lower(): i for i, w in reversed(list(enumerate(words)))}
    rows, src = [], []
    for word, row in vocab.items():
        if row == emb.padding_idx or not 0 <= row < emb.num_embeddings:
            continue
        i = exact.get(word, lower.get(word.lower()))
        if i is not None:
            rows.append(row)
            src.append(i)
    if rows:
        with torch.no_grad():
            values = torch.as_tensor(vectors[src], dtype=emb.weight.dtype)
            emb.weight[torch.as_tensor(rows)] = values.to(emb.weight.device)
    return len(rows)
