"""int8 vs fp32: the error an int8 model adds, per output and in total.

Float outputs report abs diffs; integer outputs (argmax class ids) the share of differing
elements, since an abs diff of class ids means nothing; outputs whose length depends on the
data (detections after NMS) only how often and by how much their length changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.export.diff import diff_stats, finite_or_none
from e2ekit.core.export.errors import ExportError
from e2ekit.core.infer import make_session


@dataclass
class Int8Diff:
    """Running int8-vs-fp32 sums per output, and which outputs are integer or variable."""

    per_output: dict[str, dict[str, Any]]
    variable: set[str]
    integer: set[str] = field(default_factory=set)

    def float_entries(self) -> list[dict[str, Any]]:
        return [
            e
            for n, e in self.per_output.items()
            if n not in self.integer and n not in self.variable
        ]

    def mismatch_fractions(self) -> dict[str, float]:
        return {
            n: self.per_output[n]["mismatches"] / max(self.per_output[n]["count"], 1)
            for n in self.integer
        }


@dataclass(frozen=True)
class Int8Summary:
    """The totals the report leads with, and whether the int8 model may be published."""

    max_abs_diff: float
    mean_abs_diff: float
    passed: bool
    has_floats: bool
    mismatch_fractions: dict[str, float]


def variable_length_outputs(deploy: dict[str, Any]) -> set[str]:
    """Outputs whose first axis is data-dependent: a named dynamic axis not shared with an
    input, like NMS's ``detections``."""
    input_axes = {
        str(a) for spec in deploy["inputs"] for a in spec.get("shape", []) if isinstance(a, str)
    }
    return {
        o["name"]
        for o in deploy["outputs"]
        if o.get("shape") and isinstance(o["shape"][0], str) and o["shape"][0] not in input_axes
    }


def padded_outputs(deploy: dict[str, Any]) -> tuple[str | None, set[str]]:
    """``deploy["count_output"]`` names an output holding each batch row's number of valid
    rows in the other outputs (NMS padded to a fixed size, like ``num_detections``): those
    outputs are a set of results per row, which int8 may change in count and order."""
    count = deploy.get("count_output")
    names = {o["name"] for o in deploy["outputs"]}
    if not count or count not in names:
        return None, set()
    return count, names - {count}


def compare_int8(
    fp32_path: Path,
    q_path: Path,
    deploy: dict[str, Any],
    feeds_list: list[dict[str, np.ndarray]],
) -> Int8Diff:
    """Run both models on every case and accumulate per-output differences."""
    out_names = [o["name"] for o in deploy["outputs"]]
    fp32_sess, int8_sess = make_session(fp32_path), make_session(q_path)
    count, padded = padded_outputs(deploy)
    diff = Int8Diff(
        per_output={
            n: {"max_abs_diff": 0.0, "sum_abs": 0.0, "count": 0, "mismatches": 0} for n in out_names
        },
        variable=variable_length_outputs(deploy) | padded,
    )
    for feeds in feeds_list:
        ref = dict(zip(out_names, fp32_sess.run(out_names, feeds), strict=True))
        got = dict(zip(out_names, int8_sess.run(out_names, feeds), strict=True))
        for n in out_names:
            if n in padded and count is not None:
                _accumulate_counts(diff, n, ref[count], got[count])
            else:
                _accumulate(diff, n, ref[n], got[n])
    return diff


def _accumulate_counts(diff: Int8Diff, name: str, r: np.ndarray, g: np.ndarray) -> None:
    """A padded output: per batch row, whether int8 kept another number of results."""
    e = diff.per_output[name]
    r, g = np.asarray(r).reshape(-1), np.asarray(g).reshape(-1)
    e["cases"] = e.get("cases", 0) + len(r)
    e["length_changed"] = e.get("length_changed", 0) + int(np.count_nonzero(r != g))
    e["length_diff_sum"] = e.get("length_diff_sum", 0) + int(np.abs(r - g).sum())


def _accumulate(diff: Int8Diff, name: str, r: np.ndarray, g: np.ndarray) -> None:
    """Add one case's fp32 (``r``) vs int8 (``g``) values of output ``name``."""
    e = diff.per_output[name]
    if name in diff.variable:
        # e.g. detections after NMS: int8 may keep other boxes, in another order, so element
        # diffs mean nothing; count length changes (judge these by a task metric such as AP)
        e["cases"] = e.get("cases", 0) + 1
        e["length_changed"] = e.get("length_changed", 0) + int(r.shape != g.shape)
        e["length_diff_sum"] = e.get("length_diff_sum", 0) + abs(
            (r.shape[0] if r.ndim else 1) - (g.shape[0] if g.ndim else 1)
        )
        return
    if r.shape != g.shape:
        raise ExportError(f"int8 output {name!r} shape {g.shape} != fp32 {r.shape}")
    e["count"] += r.size
    if r.dtype.kind in "iub":  # class ids: abs diffs are meaningless
        diff.integer.add(name)
        e["mismatches"] += int(np.count_nonzero(r != g))
        return
    mx, _, mean = diff_stats(r, g, rel_floor=1e-6)
    e["max_abs_diff"] = max(e["max_abs_diff"], mx)
    e["sum_abs"] += mean * r.size


def summarize(diff: Int8Diff, atol: float | None) -> Int8Summary:
    """Totals over the float outputs; ``atol`` bounds their max abs diff, or, when every
    output is integer, the mismatch fractions (``<= atol``)."""
    floats = diff.float_entries()
    fractions = diff.mismatch_fractions()
    if floats:
        total = sum(e["count"] for e in floats)
        max_abs = max(e["max_abs_diff"] for e in floats)
        mean_abs = sum(e["sum_abs"] for e in floats) / max(total, 1)
        passed = math.isfinite(max_abs) and (atol is None or max_abs < atol)
    else:
        max_abs = mean_abs = math.nan  # written as null
        passed = atol is None or all(f <= atol for f in fractions.values())
    return Int8Summary(max_abs, mean_abs, passed, bool(floats), fractions)


def output_reports(diff: Int8Diff) -> dict[str, dict[str, Any]]:
    """Each output's int8-vs-fp32 entry in the export report."""
    return {
        n: _output_report(n, e, diff.integer, diff.variable) for n, e in diff.per_output.items()
    }


def _output_report(name: str, e: dict[str, Any], integer: set[str], variable: set[str]) -> dict:
    if name in variable:
        cases = max(e.get("cases", 0), 1)
        return {
            "variable_length": True,
            "length_changed_cases": e.get("length_changed", 0),
            "mean_length_diff": e.get("length_diff_sum", 0) / cases,
        }
    if name in integer:
        return {"mismatch_fraction": e["mismatches"] / max(e["count"], 1)}
    return {
        "max_abs_diff": finite_or_none(e["max_abs_diff"]),
        "mean_abs_diff": finite_or_none(e["sum_abs"] / max(e["count"], 1)),
    }
