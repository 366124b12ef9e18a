"""A small MLP classifier: losses in training mode, logits in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.toy.registry import MODELS


class ToyMLP(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_classes: int,
        hidden: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features))  # (B, K)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | torch.Tensor:
        logits = self.logits(batch["features"])
        if self.training:
            return {"loss_ce": F.cross_entropy(logits, batch["label"])}
        return logits


class ToyInference(nn.Module):
    """Export wrapper: raw features in, class probabilities out."""

    def __init__(self, net: ToyMLP) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.logits(features).softmax(dim=-1)


@MODELS.register("toy_mlp")
def toy_mlp(
    num_features: int, num_classes: int, hidden: int = 64, depth: int = 2, dropout: float = 0.0
) -> ToyMLP:
    return ToyMLP(num_features, num_classes, hidden, depth, dropout)


@MODELS.register("toy_mlp_tiny")
def toy_mlp_tiny(num_features: int, num_classes: int, dropout: float = 0.0) -> ToyMLP:
    return ToyMLP(num_features, num_classes, hidden=8, depth=1, dropout=dropout)
