"""Toy task: the engine's contract in its smallest honest form."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2ekit.core.engine import ExportSpec, Task, to_device
from e2ekit.toy import model as _models  # noqa: F401  (registers toy models)
from e2ekit.toy.config import ToyConfig, ToyData
from e2ekit.toy.data import TabularDataset, make_blobs, read_csv
from e2ekit.toy.model import ToyInference
from e2ekit.toy.registry import MODELS

__all__ = ["ToyConfig", "ToyData", "ToyTask", "build_inference_module"]


class ToyTask(Task):
    kit = "toy"
    schema = ToyConfig
    default_metric = "accuracy"
    metric_mode = "max"
    cfg: ToyConfig

    def build_model(self) -> nn.Module:
        d = self.cfg.data
        return MODELS.build(self.cfg.model, num_features=d.num_features, num_classes=d.num_classes)

    def build_dataset(self, split: str) -> TabularDataset | None:
        d = self.cfg.data
        path = {"train": d.train, "val": d.val}.get(split)
        if path:
            return TabularDataset(*read_csv(Path(path), d.num_features, d.num_classes))
        if split not in ("train", "val"):
            return None
        n = d.num_train if split == "train" else d.num_val
        seed = d.seed * 2 + (split == "val")
        return TabularDataset(*make_blobs(n, d.num_features, d.num_classes, seed, d.noise))

    def evaluate(self, model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict:
        correct, total, loss_sum = 0, 0, 0.0
        for batch in loader:
            batch = to_device(batch, device)
            logits = model(batch)
            loss_sum += float(F.cross_entropy(logits, batch["label"], reduction="sum"))
            correct += int((logits.argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
        return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}

    def class_names(self) -> list[str]:
        d = self.cfg.data
        return d.class_names or [f"class_{i}" for i in range(d.num_classes)]

    def export_spec(self, model: nn.Module) -> ExportSpec:
        d = self.cfg.data
        gen = torch.Generator().manual_seed(0)
        return ExportSpec(
            module=ToyInference(model).eval(),
            example_inputs={"features": torch.randn(2, d.num_features, generator=gen)},
            parity_inputs=[{"features": torch.randn(7, d.num_features, generator=gen)}],
            output_names=["probs"],
            dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}},
            deploy={
                "kit": "toy",
                "task": "classification",
                "num_features": d.num_features,
                "class_names": self.class_names(),
                "postprocess": {"type": "argmax_probs"},
            },
            torch_builder="e2ekit.toy.task:build_inference_module",
            builder_config={
                "model": dict(self.cfg.model),
                "num_features": d.num_features,
                "num_classes": d.num_classes,
            },
        )


def build_inference_module(model: dict[str, Any], num_features: int, num_classes: int) -> nn.Module:
    """Rebuild the export wrapper for the Predictor's torch backend."""
    net = MODELS.build(model, num_features=num_features, num_classes=num_classes)
    return ToyInference(net).eval()
