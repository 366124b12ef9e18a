"""Encoder + task head: one module per task type, one forward contract for the engine.

``scores(input_ids, attention_mask, token_type_ids)`` is what gets exported (logits,
token emissions, or start/end logits); ``forward(batch)`` adds the loss in training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.text.models.crf import CRF

__all__ = ["TextInference", "TextModel", "first_subtoken_index"]


def first_subtoken_index(first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of word-initial sub-tokens, left-aligned: (B, W) indices and (B, W) mask."""
    counts = first.sum(dim=1)
    width = max(int(counts.max()), 1) if first.numel() else 1
    # stable sort puts the True positions first, in order
    idx = torch.sort((~first).to(torch.int8), dim=1, stable=True).indices[:, :width]
    mask = torch.arange(width, device=first.device)[None, :] < counts[:, None]
    return idx, mask


class TextModel(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        task_type: str,
        num_labels: int,
        *,
        pooling: str = "mean",
        dropout: float | None = None,
        crf: bool = False,
        rdrop: float = 0.0,
    ) -> None:
        super().__init__()
        if rdrop and task_type not in ("cls", "pair"):
            raise ValueError("model.rdrop is only for task.type: cls or pair")
        self.rdrop = float(rdrop)
        self.encoder = encoder
        self.task_type = task_type
        self.pooling = pooling
        cfg = encoder.config
        hidden = cfg.hidden_size
        p = dropout if dropout is not None else getattr(cfg, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(p)
        out = 2 if task_type == "mrc" else num_labels
        self.head = nn.Linear(hidden, out)
        nn.init.normal_(self.head.weight, std=getattr(cfg, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)
        self.crf: nn.Module | None = None
        if crf:
            if task_type != "ner":
                raise ValueError("model.crf is only for task.type: ner")
            self.crf = CRF(num_labels)

    @property
    def num_layers(self) -> int:
        return int(self.encoder.config.num_hidden_layers)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state  # (B, L, H)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)

    def scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        if self.task_type in ("cls", "pair"):
            return self.head(self.dropout(self.pool(hidden, attention_mask)))  # (B, K)
        logits = self.head(self.dropout(hidden))  # (B, L, K) or (B, L, 2)
        if self.task_type == "mrc":
            start, end = logits.unbind(dim=-1)
            return start, end  # (B, L) each
        return logits

    def forward(self, batch: dict[str, Any]) -> Any:
        if self.training and self.rdrop:
            return self._rdrop_loss(batch)
        out = self.scores(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        if not self.training:
            return out
        if self.task_type in ("cls", "pair"):
            return {"loss": F.cross_entropy(out.float(), batch["label"])}
        if self.task_type == "mrc":
            start, end = out
            loss = F.cross_entropy(start.float(), batch["start_position"]) + F.cross_entropy(
                end.float(), batch["end_position"]
            )
            return {"loss": loss / 2}
        labels = batch["labels"]
        if self.crf is None:
            return {"loss": F.cross_entropy(out.flatten(0, 1).float(), labels.flatten())}
        idx, mask = first_subtoken_index(labels != -100)
        emissions = out.float().gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))
        tags = labels.gather(1, idx).masked_fill(~mask, 0)
        return {"loss": self.crf(emissions, tags, mask)}

    def _rdrop_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """R-Drop (Liang et al., 2021): the batch twice in one pass (two dropout masks); cross-
        entropy of both plus ``rdrop`` times the symmetric KL between their predictions, which
        regularises fine-tuning on small sets at twice the compute per example."""
        types = batch.get("token_type_ids")
        out = self.scores(
            batch["input_ids"].repeat(2, 1),
            batch["attention_mask"].repeat(2, 1),
            None if types is None else types.repeat(2, 1),
        ).float()
        label = batch["label"]
        ce = F.cross_entropy(out, label.repeat(2))
        logp, logq = out.log_softmax(-1).chunk(2)
        kl = F.kl_div(logp, logq, log_target=True, reduction="batchmean") + F.kl_div(
            logq, logp, log_target=True, reduction="batchmean"
        )
        return {"loss_ce": ce, "loss_rdrop": self.rdrop * kl / 2}  # the trainer sums the terms


class TextInference(nn.Module):
    """Export wrapper with explicit tensor inputs (ONNX graphs take no dicts)."""

    def __init__(self, model: TextModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        return self.model.scores(input_ids, attention_mask, token_type_ids)
