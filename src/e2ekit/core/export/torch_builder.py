"""The Predictor's torch backend: the builder deploy.yaml names, its weights and their check.

An export with ``torch_builder`` also serves with eager PyTorch: ``deploy.yaml``'s ``torch``
section names a builder, ``weights.pt`` holds the state dict. The rebuild is done here exactly
as the backend will do it, so a builder that does not reproduce the module fails the export
instead of the first request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2ekit.core.export.diff import diff_stats, finite_or_none, to_numpy
from e2ekit.core.export.errors import ExportError
from e2ekit.core.infer import _locate, flatten_outputs


def resolve_torch_builder(name: str) -> Callable[..., nn.Module]:
    """The callable a ``torch.builder`` name stands for (``"pkg.mod:func"``).

    The one place the export turns a builder name into code: what may be named is decided
    here.
    """
    return _locate(name)


def save_weights(module: nn.Module, path: Path) -> None:
    """The state dict on CPU, so a CPU-only server can load it."""
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)


def check_rebuild(
    adapter: nn.Module,
    weights: Path,
    torch_builder: str,
    builder_config: dict[str, Any],
    case: dict[str, torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    atol: float,
) -> dict[str, Any]:
    """Rebuild exactly as the Predictor torch backend will, so a bad builder fails now."""
    try:
        rebuilt = resolve_torch_builder(torch_builder)(**builder_config)
        rebuilt.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ExportError(
            f"torch_builder {torch_builder!r} could not rebuild the module: {e}"
        ) from e
    rebuilt.eval()
    args = tuple(case[n] for n in input_names)
    with torch.inference_mode():
        ref = [to_numpy(t) for t in adapter(*args)]
        got = [
            to_numpy(t) for t in flatten_outputs(rebuilt(*(a.cpu() for a in args)), output_names)
        ]
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        worst = max(worst, diff_stats(r, g, atol)[0] if r.shape == g.shape else math.inf)
    return {
        "builder": torch_builder,
        "max_abs_diff": finite_or_none(worst),
        "passed": worst < atol,
    }


def torch_deploy_section(
    torch_builder: str,
    builder_config: dict[str, Any],
    output_names: list[str],
    argmax: Mapping[str, str],
    argmax_axis: int,
) -> dict[str, Any]:
    """deploy.yaml's ``torch`` section: how the backend rebuilds and post-processes."""
    section: dict[str, Any] = {"builder": torch_builder, "config": builder_config}
    if argmax:
        # The module returns the float outputs; the torch backend applies the argmax.
        section.update(
            module_outputs=list(output_names), argmax=dict(argmax), argmax_axis=argmax_axis
        )
    return section
