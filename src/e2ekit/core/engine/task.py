"""The small interface between the engine and a kit.

A kit implements one ``Task`` per problem type. In training mode its model's
``forward(batch)`` returns a ``dict[str, Tensor]`` of losses (the engine sums them);
``evaluate`` turns a loader into a dict of metrics; ``export_spec`` says how the model
leaves PyTorch. Serving and predict adapters belong to the kit (``Kit``, ``runner.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from e2ekit.core.schema import RunConfig


@dataclass
class ExportSpec:
    """What ``core.export.export_onnx`` needs from a kit."""

    module: nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    deploy: dict[str, Any]
    parity_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    torch_builder: str | None = None
    builder_config: dict[str, Any] | None = None
    argmax: dict[str, str] | None = None  # float output -> int class-id output appended in ONNX
    assets: Callable[[Path], None] | None = None  # writes extra files (tokenizer) into the export
    # int8: keep the output layers float unless export.quantize_keep_final_float says otherwise
    int8_keep_final_float: bool = False

    def export(self, out_dir: str | Path, opset: int = 17, atol: float = 1e-4) -> dict[str, Any]:
        """Export to ``out_dir`` with ``core.export.export_onnx``; returns the parity report."""
        from e2ekit.core.export import export_onnx

        return export_onnx(
            self.module,
            self.example_inputs,
            out_dir,
            output_names=self.output_names,
            dynamic_axes=self.dynamic_axes,
            deploy=self.deploy,
            opset=opset,
            parity_inputs=self.parity_inputs,
            torch_builder=self.torch_builder,
            builder_config=self.builder_config,
            atol=atol,
            assets=self.assets,
            **({"argmax": self.argmax} if self.argmax else {}),
        )


class Task:
    """Base class of a kit's task; override the methods the engine and CLI call."""

    kit: ClassVar[str] = ""
    schema: ClassVar[type[RunConfig]] = RunConfig
    default_metric: ClassVar[str] = "loss"
    metric_mode: ClassVar[str] = "min"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    # -- training ---------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_dataset(self, split: str) -> Dataset | None:
        """``split`` is 'train', 'val' or 'test'; None when the split is not configured."""
        raise NotImplementedError

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any] | None:
        return None

    def sample_lengths(self, dataset: Dataset) -> Sequence[int] | None:
        """Per-sample lengths for length-bucketed batching (text); None = no bucketing."""
        return None

    bucket: int = 0  # windows of this many global batches are sorted by length

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """Custom optimizer groups (layer-wise LR decay, frozen parts); None = default."""
        return None

    def evaluate(self, model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict:
        """Metrics of ``model`` (already in eval mode, under inference_mode) over ``loader``
        (batches of the 'val' split, wrapped in a progress bar)."""
        raise NotImplementedError

    def eval_pictures(self, out_dir: Path) -> list[Path]:
        """Pictures of the last :meth:`evaluate` (confusion matrix, per-class bars, PR
        curves) written into ``out_dir`` by ``eval --out``; none by default."""
        return []

    # -- deployment ---------------------------------------------------------------
    def export_spec(self, model: nn.Module) -> ExportSpec:
        raise NotImplementedError

    def calibration_inputs(self, n: int) -> list[dict[str, np.ndarray]] | None:
        """Up to ``n`` real model inputs (as the export takes them, keyed by input name) to
        calibrate static int8 quantization; None falls back to the export's sample inputs."""
        return None
