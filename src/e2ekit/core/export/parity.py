"""ONNX Runtime vs PyTorch: the parity checks an export must pass, and their report entries.

Parity is measured as served (onnxruntime with graph optimizations on) on every input case,
so a claim like "dynamic axes work" is proven on other batch/spatial sizes, not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2ekit.core.export.diff import diff_stats, finite_or_none, to_numpy
from e2ekit.core.infer import make_session

# Largest share of argmax class ids that may differ between ONNX and torch (near-ties only).
ARGMAX_MISMATCH_TOL = 1e-3


def onnx_parity(
    adapter: nn.Module,
    model_path: Path,
    cases: list[dict[str, torch.Tensor]],
    input_names: list[str],
    output_names: list[str],
    atol: float,
    keep: Collection[str] = (),
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """Compare eager PyTorch against onnxruntime (as served: optimizations on) per output.

    Also returns the torch reference values of the ``keep`` outputs, one array per case.
    """
    session = make_session(model_path)
    per_output: dict[str, dict[str, Any]] = {
        n: {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "shapes": []} for n in output_names
    }
    errors: list[str] = []
    refs: dict[str, list[np.ndarray]] = {n: [] for n in keep}
    for ci, case in enumerate(cases):
        args = tuple(case[n] for n in input_names)
        with torch.inference_mode():
            ref = [to_numpy(t) for t in adapter(*args)]
        got = session.run(output_names, {n: to_numpy(case[n]) for n in input_names})
        for name, r, g in zip(output_names, ref, got, strict=True):
            if name in refs:
                refs[name].append(r)
            entry = per_output[name]
            entry["shapes"].append(list(r.shape))
            if entry["max_abs_diff"] is None:
                continue
            if r.shape != g.shape:
                errors.append(
                    f"case {ci} output {name!r}: torch {list(r.shape)} vs onnx {list(g.shape)}"
                )
                entry["max_abs_diff"] = entry["max_rel_diff"] = None
                continue
            mx, rel, _ = diff_stats(r, g, rel_floor=atol)
            entry["max_abs_diff"] = finite_or_none(max(entry["max_abs_diff"], mx))
            entry["max_rel_diff"] = finite_or_none(max(entry["max_rel_diff"], rel))
    diffs = [e["max_abs_diff"] for e in per_output.values()]
    max_abs = None if any(d is None for d in diffs) else max(diffs)
    return {
        "max_abs_diff": max_abs,
        "per_output": per_output,
        "cases": len(cases),
        "passed": max_abs is not None and max_abs < atol and not errors,
        "atol": atol,
        "errors": errors,
    }, refs


def parity_failure(parity: Mapping[str, Any], atol: float) -> str:
    """One line naming the worst output, for the ExportError message."""
    worst = max(
        parity["per_output"].items(),
        key=lambda kv: math.inf if kv[1]["max_abs_diff"] is None else kv[1]["max_abs_diff"],
    )
    errors = "; ".join(parity["errors"])
    return (
        f"ONNX parity failed: output {worst[0]!r} max_abs_diff="
        f"{worst[1]['max_abs_diff']} (atol={atol})" + (f"; {errors}" if errors else "")
    )


def argmax_parity(
    model_path: Path,
    cases: list[dict[str, torch.Tensor]],
    input_names: list[str],
    refs: Mapping[str, list[np.ndarray]],
    argmax: Mapping[str, str],
    axes: Mapping[str, int],
    parity: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Run the final model and count class ids differing from torch's argmax of the refs."""
    session = make_session(model_path)
    new_names = list(argmax.values())
    mismatches: dict[str, int | None] = dict.fromkeys(new_names, 0)  # None: shape mismatch
    elements = dict.fromkeys(new_names, 0)
    for ci, case in enumerate(cases):
        got = session.run(new_names, {n: to_numpy(case[n]) for n in input_names})
        for (src, new), g in zip(argmax.items(), got, strict=True):
            want = torch.from_numpy(refs[src][ci]).argmax(dim=axes[new]).numpy()
            m = mismatches[new]
            if m is None or g.shape != want.shape:
                mismatches[new] = None
                continue
            mismatches[new] = m + int(np.count_nonzero(g != want))
            elements[new] += int(want.size)
    result: dict[str, dict[str, Any]] = {}
    for src, new in argmax.items():
        m, n = mismatches[new], elements[new]
        result[new] = {
            "from": src,
            "axis": axes[new],
            "mismatch_fraction": None if m is None else (m / n if n else 0.0),
            "elements": n,
            "max_abs_diff_before_argmax": parity["per_output"][src]["max_abs_diff"],
        }
    return result


def argmax_failures(argmax_report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A message per argmax output whose class ids differ beyond :data:`ARGMAX_MISMATCH_TOL`."""
    failures = []
    for new, entry in argmax_report.items():
        frac = entry["mismatch_fraction"]
        if frac is None or frac > ARGMAX_MISMATCH_TOL:
            failures.append(
                f"ONNX argmax output {new!r} mismatch_fraction={frac} vs torch argmax of "
                f"{entry['from']!r} (tolerance {ARGMAX_MISMATCH_TOL})"
            )
    return failures
