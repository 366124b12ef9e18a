"""Argument checks for :func:`~e2ekit.core.export.export_onnx`, run before any work.

Mistakes in names, axes or deploy values would otherwise surface as odd exporter errors deep
inside torch.onnx, or as a deploy.yaml that silently lost a key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import yaml

# Keys export_onnx owns in deploy.yaml; a kit passing them would silently lose them.
RESERVED_DEPLOY_KEYS = frozenset(
    {"format_version", "model_file", "int8_model_file", "inputs", "outputs", "opset", "torch"}
)


def validate_export_args(
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    deploy: Mapping[str, Any],
    parity_inputs: Sequence[Mapping[str, torch.Tensor]],
    torch_builder: str | None,
    builder_config: Mapping[str, Any] | None,
    argmax: Mapping[str, str] | None = None,
    argmax_axis: int = 1,
) -> None:
    """Fail before any work on mistakes that would otherwise surface as odd exporter errors."""
    if not example_inputs:
        raise ValueError("example_inputs must contain at least one input")
    for name, t in example_inputs.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example input {name!r} must be a torch.Tensor, got {type(t)}")
    if not output_names or len(set(output_names)) != len(output_names):
        raise ValueError(f"output_names must be non-empty and unique, got {list(output_names)}")
    clash = set(example_inputs) & set(output_names)
    if clash:
        raise ValueError(f"names used both as input and output: {sorted(clash)}")
    argmax = dict(argmax or {})
    if argmax:
        bad_src = [k for k in argmax if k not in output_names]
        if bad_src:
            raise ValueError(
                f"argmax sources {bad_src} are not in output_names {list(output_names)}"
            )
        new = list(argmax.values())
        if not all(isinstance(n, str) and n for n in new) or len(set(new)) != len(new):
            raise ValueError(f"argmax output names must be unique non-empty strings, got {new}")
        taken = sorted(set(new) & (set(output_names) | set(example_inputs)))
        if taken:
            raise ValueError(f"argmax output names {taken} are already input/output names")
        if isinstance(argmax_axis, bool) or not isinstance(argmax_axis, int):
            raise TypeError(f"argmax_axis must be an int, got {argmax_axis!r}")
    known = set(example_inputs) | set(output_names) | set(argmax.values())
    unknown = [k for k in dynamic_axes if k not in known]
    if unknown:
        raise ValueError(f"dynamic_axes names {unknown} are neither inputs nor outputs")
    for k, axes in dynamic_axes.items():
        if k in example_inputs:
            rank = example_inputs[k].dim()
            bad = [a for a in axes if not 0 <= int(a) < rank]
            if bad:
                raise ValueError(f"dynamic_axes[{k!r}] axes {bad} out of range for rank {rank}")
    reserved = sorted(RESERVED_DEPLOY_KEYS & set(deploy))
    if reserved:
        raise ValueError(f"deploy must not set keys owned by export_onnx: {reserved}")
    try:
        yaml.safe_dump(dict(deploy))
    except yaml.YAMLError as e:
        raise TypeError(f"deploy must contain plain YAML types (no numpy/torch): {e}") from e
    expected = list(example_inputs)
    for i, case in enumerate(parity_inputs):
        if list(case) != expected and set(case) != set(expected):
            raise ValueError(f"parity_inputs[{i}] has inputs {list(case)}; expected {expected}")
    if torch_builder is not None:
        try:
            yaml.safe_dump(dict(builder_config or {}))
        except yaml.YAMLError as e:
            raise TypeError(f"builder_config must contain plain YAML types: {e}") from e
    elif builder_config is not None:
        raise ValueError("builder_config given without torch_builder")
