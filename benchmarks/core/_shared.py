"""Models, export and statistics shared by the core benchmarks (not a benchmark itself).

The models are plain ``nn.Module``s of realistic size (not the tiny test models) so that the
numbers say something about real workloads: per-call overhead dominates tiny models and
hides what the runtime does with the math.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2ekit.core.export import export_onnx


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the final JSON line."""
    print(message, file=sys.stderr, flush=True)


class MLP(nn.Module):
    """Tabular/embedding-head sized MLP: 256 -> 1024 -> 1024 -> 1024 -> 16 with GELU."""

    def __init__(
        self, in_dim: int = 256, hidden: int = 1024, depth: int = 3, out: int = 16
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """Small image classifier: 3 stride-2 conv-bn-relu blocks, global pool, linear head."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = 3
        for c in channels:
            blocks += [
                nn.Conv2d(width, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            width = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm non-trivial running stats, as a trained model has (fresh ones are 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def export_model(
    module: nn.Module, example: torch.Tensor, parity: torch.Tensor, out_dir: Path
) -> dict[str, Any]:
    """Export through the kit path (``export_onnx``) with a dynamic batch axis."""
    return export_onnx(
        module.eval(),
        {"x": example},
        out_dir,
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        deploy={"kit": "benchmark"},
        parity_inputs=[{"x": parity}],
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def warn_if_busy() -> None:
    """Other work on a small machine skews every number (torch eager most): say so."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        log(f"warning: 1-min load average is {load:.1f} on {cpus} CPUs; results will be noisy")


def environment(threads: int) -> dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import onnxruntime

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        # Other work on the machine skews results (torch eager most): record the load.
        "loadavg_1m_start": os.getloadavg()[0],
    }
