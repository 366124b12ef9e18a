"""Export an inference module to a self-contained deploy folder (ONNX + int8 + parity report).

Every kit calls :func:`export_onnx` at the end of training and optionally
:func:`quantize_int8`; :class:`e2ekit.core.infer.Predictor` then serves the folder. The folder
is the contract between training and serving, so exporting is all-or-nothing and every claim
about the model (dynamic axes work, ONNX matches PyTorch, int8 error) is measured and written
to ``export_report.json`` rather than assumed.

Folder layout::

    model.onnx          fp32 ONNX graph
    deploy.yaml         I/O contract + the kit's pre/post-processing settings
    export_report.json  parity numbers, versions, sizes, timings
    sample_inputs.npz   a few input cases, so later checks need no kit code
    weights.pt          state_dict for the torch backend (only with ``torch_builder``)
    model.int8.onnx     int8 model, dynamic or static/QDQ (after ``quantize_int8``)

Failure policy: files are written to a hidden temporary sibling folder and moved into
``out_dir`` only when the export, the checker and all parity checks passed. When a parity
check fails, ``out_dir`` is left untouched (a previous good export stays valid) and the
temporary folder is renamed to ``<out_dir>.failed-export`` (replacing an older one) so the
report and the offending ``model.onnx`` can be inspected; :class:`ExportError` names it. Any
other error removes the temporary folder.

Argmax outputs: ``export_onnx(..., argmax={"probs": "label_map"})`` serves a class-id map
instead of a float output. Parity is measured on the float output (class ids of near-tied
scores may legitimately differ between runtimes); an ONNX ``ArgMax`` node is then appended,
replaces the float graph output, and the share of class ids differing from torch's argmax is
reported (``report["argmax"]``) and bounded by :data:`ARGMAX_MISMATCH_TOL`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from torch import nn

from e2ekit.core.infer import (
    DEPLOY_FILE,
    FORMAT_VERSION,
    SAMPLE_INPUTS_FILE,
    WEIGHTS_FILE,
    ExportFolderError,
    _locate,
    flatten_outputs,
    load_deploy,
    load_sample_inputs,
    make_session,
)

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"
FAILED_SUFFIX = ".failed-export"
# Keys export_onnx owns in deploy.yaml; a kit passing them would silently lose them.
RESERVED_DEPLOY_KEYS = frozenset(
    {"format_version", "model_file", "int8_model_file", "inputs", "outputs", "opset", "torch"}
)
# Artifacts that describe one specific model; stale copies from an older export are removed.
_STALE_ARTIFACTS = (INT8_MODEL_FILE, WEIGHTS_FILE, SAMPLE_INPUTS_FILE)
# sample_inputs.npz is meant to stay small: later cases are dropped beyond this size.
_SAMPLE_BYTES_CAP = 16 * 1024 * 1024
# Largest share of argmax class ids that may differ between ONNX and torch (near-ties only).
ARGMAX_MISMATCH_TOL = 1e-3
_FLOAT_ELEM_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


class ExportError(RuntimeError):
    """Export produced a model that cannot be trusted (parity failure, dropped input...).

    ``report`` is the report dict and ``artifacts_dir`` the folder holding the failed files
    (``None`` when nothing was kept).
    """

    def __init__(
        self,
        message: str,
        *,
        report: dict[str, Any] | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.report = report
        self.artifacts_dir = artifacts_dir


class _ExportAdapter(nn.Module):
    """Returns the wrapped module's outputs as a tuple in ``output_names`` order.

    The TorchScript exporter flattens dict outputs by insertion order; matching by name here
    guarantees ONNX output ``k`` really is ``output_names[k]``.
    """

    def __init__(self, module: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.output_names = list(output_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.module(*args), self.output_names))


# --------------------------------------------------------------------------- small helpers


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + ``os.replace`` so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _write_yaml(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, yaml.safe_dump(obj, sort_keys=False).encode())


def _finite_or_none(x: float) -> float | None:
    """JSON has no inf/nan; a non-finite diff is recorded as null (and always fails)."""
    return float(x) if math.isfinite(x) else None


def _diff_stats(ref: np.ndarray, got: np.ndarray, rel_floor: float) -> tuple[float, float, float]:
    """(max abs, max rel, mean abs) difference; NaN/inf only match the same NaN/inf.

    The relative diff divides by ``max(|ref|, rel_floor)`` so near-zero reference values do
    not produce meaningless huge ratios.
    """
    if ref.size == 0:
        return 0.0, 0.0, 0.0
    a = ref.astype(np.float64, copy=False)
    b = got.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a - b)
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    rel = d / np.maximum(np.abs(a), rel_floor)
    rel[same] = 0.0
    return float(d.max()), float(rel.max()), float(d.mean())


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _dims(type_proto: onnx.TypeProto) -> list[int | str | None]:
    """ONNX shape as a list: ints for static dims, axis names for dynamic ones."""
    dims: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return dims


def _io_specs(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    initializers = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        elem = v.type.tensor_type.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
        return {"name": v.name, "dtype": dtype, "shape": _dims(v.type)}

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _validate_args(
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


def _sample_cases(
    cases: Sequence[Mapping[str, torch.Tensor]], dynamic_axes: Mapping[str, Mapping[int, str]]
) -> dict[str, np.ndarray]:
    """Pick the input cases for sample_inputs.npz, keeping the file small.

    The first case is always kept (cut to batch 1 when it is large and every input has a
    dynamic axis 0); later cases are kept while the total stays under the cap.
    """
    out: dict[str, np.ndarray] = {}
    total = 0
    batch_dynamic = all(0 in dynamic_axes.get(n, {}) for n in cases[0])
    for i, case in enumerate(cases):
        arrays = {n: _to_numpy(t) for n, t in case.items()}
        size = sum(a.nbytes for a in arrays.values())
        if i == 0 and size > _SAMPLE_BYTES_CAP and batch_dynamic:
            arrays = {n: a[:1].copy() for n, a in arrays.items()}
            size = sum(a.nbytes for a in arrays.values())
        if i > 0 and total + size > _SAMPLE_BYTES_CAP:
            break
        total += size
        out.update({f"case{i}.{n}": a for n, a in arrays.items()})
    return out


def _publish(tmp_dir: Path, out_dir: Path) -> None:
    """Move a complete export into ``out_dir``; deploy.yaml last since readers start there."""
    if not out_dir.exists():
        os.replace(tmp_dir, out_dir)  # atomic: the folder appears complete or not at all
        return
    if not out_dir.is_dir():
        raise NotADirectoryError(f"export target {str(out_dir)!r} exists and is not a folder")
    produced = {p.name for p in tmp_dir.iterdir()}
    for p in sorted(tmp_dir.iterdir(), key=lambda p: p.name == DEPLOY_FILE):
        os.replace(p, out_dir / p.name)
    for name in _STALE_ARTIFACTS:
        if name not in produced:
            (out_dir / name).unlink(missing_ok=True)
    tmp_dir.rmdir()


# --------------------------------------------------------------------------- export


def export_onnx(
    module: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    out_dir: str | Path,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    deploy: dict[str, Any],
    opset: int = 17,
    parity_inputs: list[dict[str, torch.Tensor]] | None = None,
    torch_builder: str | None = None,
    builder_config: dict[str, Any] | None = None,
    atol: float = 1e-4,
    argmax: dict[str, str] | None = None,
    argmax_axis: int = 1,
    assets: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Export ``module`` to ``out_dir`` and prove the ONNX model matches PyTorch.

    ``module`` takes the inputs positionally in ``example_inputs`` order and returns a tensor,
    tuple or dict matching ``output_names``. Parity runs on ``example_inputs`` plus every
    ``parity_inputs`` case (pass other batch/spatial sizes to prove the dynamic axes).
    ``torch_builder`` ("pkg.mod:func", called as ``func(**builder_config)``) enables the
    Predictor torch backend; the rebuild is checked against ``module`` here. Returns the
    report written to ``export_report.json``; raises :class:`ExportError` on parity failure.

    ``argmax`` maps float outputs to new int64 outputs (``{"probs": "label_map"}``) computed
    in the graph by ``ArgMax(axis=argmax_axis, keepdims=0)``; the new output replaces the
    float one in the served model. ``dynamic_axes`` may name the new output (its axes index
    the argmax output); the float output's own dynamic axes drive the export.

    ``assets(folder)`` writes a kit's extra files (a tokenizer, a vocabulary) beside the
    model, so they are published with it all-or-nothing.
    """
    parity_inputs = list(parity_inputs or [])
    _validate_args(
        example_inputs,
        output_names,
        dynamic_axes,
        deploy,
        parity_inputs,
        torch_builder,
        builder_config,
        argmax,
        argmax_axis,
    )
    input_names = list(example_inputs)
    cases = [example_inputs, *({n: c[n] for n in input_names} for c in parity_inputs)]
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    was_training = module.training
    module.eval()
    adapter = _ExportAdapter(module, output_names).eval()
    try:
        report = _export_into(
            adapter,
            tmp_dir,
            cases=cases,
            input_names=input_names,
            output_names=list(output_names),
            dynamic_axes={
                k: {int(a): str(n) for a, n in v.items()} for k, v in dynamic_axes.items()
            },
            deploy=dict(deploy),
            opset=opset,
            torch_builder=torch_builder,
            builder_config=dict(builder_config or {}),
            atol=atol,
            argmax=dict(argmax or {}),
            argmax_axis=argmax_axis,
        )
        if assets is not None:
            assets(tmp_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        module.train(was_training)

    failures = report.pop("_failures")
    if failures:
        failed_dir = out_dir.parent / f"{out_dir.name}{FAILED_SUFFIX}"
        shutil.rmtree(failed_dir, ignore_errors=True)
        os.replace(tmp_dir, failed_dir)
        raise ExportError(
            "; ".join(failures)
            + f". Nothing was written to {str(out_dir)!r}; the failed model and "
            f"{REPORT_FILE} are in {str(failed_dir)!r}",
            report=report,
            artifacts_dir=failed_dir,
        )
    _publish(tmp_dir, out_dir)
    return report


def _export_into(
    adapter: _ExportAdapter,
    folder: Path,
    *,
    cases: list[dict[str, torch.Tensor]],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    deploy: dict[str, Any],
    opset: int,
    torch_builder: str | None,
    builder_config: dict[str, Any],
    atol: float,
    argmax: dict[str, str],
    argmax_axis: int,
) -> dict[str, Any]:
    """Write every artifact into ``folder``; the report's ``_failures`` lists failed checks."""
    model_path = folder / MODEL_FILE
    argmax_dims = {new: dynamic_axes[new] for new in argmax.values() if new in dynamic_axes}
    export_axes = {k: v for k, v in dynamic_axes.items() if k not in argmax_dims}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # torch warns that the TorchScript exporter is legacy; it is chosen deliberately
        # (no onnxscript dependency, mature dynamic_axes support).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message="The feature will be removed"
        )
        # Benign tracing notes (shape-dependent Python branches, Slice folding); the parity
        # check on other batch/spatial/sequence sizes below is what proves the graph.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            adapter,
            tuple(cases[0][n] for n in input_names),
            str(model_path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=export_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(model_path))  # path form also handles >2 GB models
    export_seconds = time.perf_counter() - t0

    model = onnx.load(str(model_path), load_external_data=False)
    in_specs, out_specs = _io_specs(model)
    graph_inputs = [s["name"] for s in in_specs]
    if graph_inputs != input_names:
        dropped = [n for n in input_names if n not in graph_inputs]
        raise ExportError(
            f"ONNX graph inputs {graph_inputs} differ from example_inputs {input_names}"
            + (f"; input(s) {dropped} are unused by the model and were dropped" if dropped else "")
        )
    if [s["name"] for s in out_specs] != output_names:
        raise ExportError(
            f"ONNX graph outputs {[s['name'] for s in out_specs]} differ from {output_names}"
        )

    failures: list[str] = []
    parity, refs = _parity(adapter, model_path, cases, input_names, output_names, atol, keep=argmax)
    if not parity["passed"]:
        worst = max(
            parity["per_output"].items(),
            key=lambda kv: math.inf if kv[1]["max_abs_diff"] is None else kv[1]["max_abs_diff"],
        )
        errors = "; ".join(parity["errors"])
        failures.append(
            f"ONNX parity failed: output {worst[0]!r} max_abs_diff="
            f"{worst[1]['max_abs_diff']} (atol={atol})" + (f"; {errors}" if errors else "")
        )

    argmax_report: dict[str, Any] = {}
    if argmax:
        axes = _append_argmax(model, model_path, refs, argmax, argmax_axis, argmax_dims)
        argmax_report = _check_argmax(model_path, cases, input_names, refs, argmax, axes, parity)
        for new, entry in argmax_report.items():
            frac = entry["mismatch_fraction"]
            if frac is None or frac > ARGMAX_MISMATCH_TOL:
                failures.append(
                    f"ONNX argmax output {new!r} mismatch_fraction={frac} vs torch argmax of "
                    f"{entry['from']!r} (tolerance {ARGMAX_MISMATCH_TOL})"
                )
        in_specs, out_specs = _io_specs(onnx.load(str(model_path), load_external_data=False))

    report: dict[str, Any] = {
        "onnx": parity,
        "opset": opset,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
        "python_version": platform.python_version(),
        "export_seconds": round(export_seconds, 4),
        "model_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if argmax:
        report["argmax"] = argmax_report

    np.savez(folder / SAMPLE_INPUTS_FILE, **_sample_cases(cases, dynamic_axes))

    deploy_out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **deploy,
        "model_file": MODEL_FILE,
        "inputs": in_specs,
        "outputs": out_specs,
        "opset": opset,
    }
    if torch_builder is not None:
        state = {k: v.detach().cpu() for k, v in adapter.module.state_dict().items()}
        torch.save(state, folder / WEIGHTS_FILE)
        rebuild = _check_rebuild(
            adapter,
            folder / WEIGHTS_FILE,
            torch_builder,
            builder_config,
            cases[0],
            input_names,
            output_names,
            atol,
        )
        report["torch_rebuild"] = rebuild
        if not rebuild["passed"]:
            failures.append(
                f"torch builder {torch_builder!r} does not reproduce the module: "
                f"max_abs_diff={rebuild['max_abs_diff']} (atol={atol})"
            )
        deploy_out["torch"] = {"builder": torch_builder, "config": builder_config}
        if argmax:
            # The module returns the float outputs; the torch backend applies the argmax.
            deploy_out["torch"].update(
                module_outputs=list(output_names),
                argmax=dict(argmax),
                argmax_axis=argmax_axis,
            )

    report["_failures"] = failures
    _write_json(folder / REPORT_FILE, {k: v for k, v in report.items() if k != "_failures"})
    _write_yaml(folder / DEPLOY_FILE, deploy_out)
    return report


def _parity(
    adapter: _ExportAdapter,
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
            ref = [_to_numpy(t) for t in adapter(*args)]
        got = session.run(output_names, {n: _to_numpy(case[n]) for n in input_names})
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
            mx, rel, _ = _diff_stats(r, g, rel_floor=atol)
            entry["max_abs_diff"] = _finite_or_none(max(entry["max_abs_diff"], mx))
            entry["max_rel_diff"] = _finite_or_none(max(entry["max_rel_diff"], rel))
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


def _append_argmax(
    model: onnx.ModelProto,
    model_path: Path,
    refs: Mapping[str, list[np.ndarray]],
    argmax: Mapping[str, str],
    argmax_axis: int,
    argmax_dims: Mapping[str, Mapping[int, str]],
) -> dict[str, int]:
    """Append ``ArgMax`` nodes and swap the float graph outputs for them; returns the axes.

    ``model`` is the exported graph (external data not loaded, so the rewrite stays small and
    the external files next to ``model_path`` keep serving it).
    """
    graph = model.graph
    outputs = {o.name: i for i, o in enumerate(graph.output)}
    node_names = {n.name for n in graph.node}
    axes: dict[str, int] = {}
    for src, new in argmax.items():
        vi = graph.output[outputs[src]]
        elem = vi.type.tensor_type.elem_type
        if elem not in _FLOAT_ELEM_TYPES:
            raise ValueError(
                f"argmax source {src!r} has ONNX type "
                f"{onnx.TensorProto.DataType.Name(elem)}; expected a float output"
            )
        rank = refs[src][0].ndim
        axis = argmax_axis + rank if argmax_axis < 0 else argmax_axis
        if not 0 <= axis < rank:
            raise ValueError(f"argmax_axis {argmax_axis} out of range for {src!r} of rank {rank}")
        bad = [a for a in argmax_dims.get(new, {}) if not 0 <= a < rank - 1]
        if bad:
            raise ValueError(f"dynamic_axes[{new!r}] axes {bad} out of range for rank {rank - 1}")
        axes[new] = axis
        node_name, k = f"ArgMax_{new}", 0
        while node_name in node_names:
            k += 1
            node_name = f"ArgMax_{new}_{k}"
        node_names.add(node_name)
        graph.node.append(
            onnx.helper.make_node("ArgMax", [src], [new], name=node_name, axis=axis, keepdims=0)
        )
        out = onnx.ValueInfoProto(name=new)
        out.type.tensor_type.elem_type = onnx.TensorProto.INT64
        if vi.type.tensor_type.HasField("shape"):
            shape = out.type.tensor_type.shape
            shape.SetInParent()  # a rank-0 result still has a (known, empty) shape
            src_dims = list(vi.type.tensor_type.shape.dim)
            for i, d in enumerate(src_dims[:axis] + src_dims[axis + 1 :]):
                dim = shape.dim.add()
                dim.CopyFrom(d)
                if i in argmax_dims.get(new, {}):
                    dim.dim_param = argmax_dims[new][i]
        graph.output[outputs[src]].CopyFrom(out)
    onnx.save(model, str(model_path))
    onnx.checker.check_model(str(model_path))
    return axes


def _check_argmax(
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
        got = session.run(new_names, {n: _to_numpy(case[n]) for n in input_names})
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


def _check_rebuild(
    adapter: _ExportAdapter,
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
        rebuilt = _locate(torch_builder)(**builder_config)
        rebuilt.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ExportError(
            f"torch_builder {torch_builder!r} could not rebuild the module: {e}"
        ) from e
    rebuilt.eval()
    args = tuple(case[n] for n in input_names)
    with torch.inference_mode():
        ref = [_to_numpy(t) for t in adapter(*args)]
        got = [
            _to_numpy(t) for t in flatten_outputs(rebuilt(*(a.cpu() for a in args)), output_names)
        ]
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        worst = max(worst, _diff_stats(r, g, atol)[0] if r.shape == g.shape else math.inf)
    return {
        "builder": torch_builder,
        "max_abs_diff": _finite_or_none(worst),
        "passed": worst < atol,
    }


# --------------------------------------------------------------------------- int8

QUANT_MODES = ("dynamic", "static")
# Dynamic: matrix multiplies only; onnxruntime's dynamic ConvInteger is slower than fp32 conv.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
# Static (QDQ): convolutions run as fused int8 kernels. Quantizing every op type (Add, Mul,
# Resize, Concat...) measured no faster than this on the seg model and costs more accuracy.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
ACTIVATION_TYPES = ("QUInt8", "QInt8")
CALIBRATE_METHODS = ("MinMax", "Percentile", "Entropy")


class _CalibrationReader:
    """A ``CalibrationDataReader`` over feed dicts (onnxruntime duck-types the interface).

    ``set_range`` serves a window of the cases: :func:`_quantize_static` has onnxruntime
    calibrate one case at a time, so cases may differ in shape and memory stays bounded.
    """

    def __init__(self, feeds_list: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds_list)
        self._next, self._end = 0, len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._feeds))


def quantize_int8(
    export_dir: str | Path,
    *,
    mode: str = "dynamic",
    calibration_inputs: list[dict[str, np.ndarray]] | None = None,
    atol: float | None = None,
    op_types: Sequence[str] | None = None,
    activation_type: str = "QUInt8",
    calibrate_method: str = "Percentile",
    keep_final_float: bool = False,
) -> dict[str, Any]:
    """Add an int8 ``model.int8.onnx`` to an export folder and measure its error.

    ``mode="dynamic"``: weights are quantized to int8 per channel, activations at run time,
    so no data is needed to *build* the model. Only ``op_types`` are quantized (default
    :data:`DYNAMIC_OP_TYPES`, the matrix multiplies): onnxruntime's dynamic ``ConvInteger``
    is several times slower than fp32 convolution on CPU, while int8 MatMul is faster.

    ``mode="static"``: calibrated QDQ quantization. Activation ranges are measured on
    ``calibration_inputs`` (``calibrate_method``: Percentile (99.999%, asymmetric ranges),
    MinMax or Entropy); weights are int8 per channel, activations ``activation_type``
    (QUInt8 or QInt8). onnxruntime fuses the QDQ pairs into int8 kernels (QLinearConv...),
    so convolutions run as int8. Default ``op_types``: :data:`STATIC_OP_TYPES`. Defaults
    measured on the seg quick model (PP-LiteSeg, 80 val images, AVX-512 VNNI CPU): QUInt8
    activations ran 1.15-1.25x faster than fp32, QInt8 (S8S8) ~0.7x (slower than fp32);
    mIoU fp32 0.7723, int8 Percentile 0.7723, MinMax 0.7709, Entropy 0.7717.
    Pass 16-64 real, preprocessed samples; batch/spatial sizes may differ between cases.

    ``keep_final_float``: the last weighted layers (Conv/MatMul/Gemm nodes with no other
    weighted node downstream) stay float. Their outputs are what the user reads; one
    per-tensor uint8 range over, e.g., a YOLO head's box offsets and class logits together
    rounds the offsets coarsely (tiny YOLOv3 on shapes: mAP -0.024 all-int8). They are a
    small share of the compute.

    ``calibration_inputs`` (default: the folder's ``sample_inputs.npz``) are also the cases
    the error against the fp32 model is measured on. With ``atol`` the int8 model is only
    published when ``max_abs_diff < atol``. Integer outputs (argmax class ids) report
    ``mismatch_fraction`` (share of differing elements) instead of abs diffs and stay out of
    the float summary; when every output is integer, ``max_abs_diff`` is null and ``atol``
    bounds their ``mismatch_fraction`` (``<= atol``). Returns the ``int8`` section added to
    ``export_report.json``; a failed check publishes nothing and withdraws an older int8 model.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {list(QUANT_MODES)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(
            f"unknown activation_type {activation_type!r}; choose one of {list(ACTIVATION_TYPES)}"
        )
    if calibrate_method not in CALIBRATE_METHODS:
        raise ValueError(
            f"unknown calibrate_method {calibrate_method!r}; "
            f"choose one of {list(CALIBRATE_METHODS)}"
        )
    if op_types is None:
        op_types = DYNAMIC_OP_TYPES if mode == "dynamic" else STATIC_OP_TYPES
    op_types = list(op_types)
    if not op_types or not all(isinstance(t, str) and t for t in op_types):
        raise ValueError(f"op_types must be a non-empty list of ONNX op names, got {op_types}")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = Path(export_dir)
    deploy = load_deploy(folder)
    fp32_path = folder / deploy.get("model_file", MODEL_FILE)
    if not fp32_path.is_file():
        raise ExportFolderError(f"export folder {str(folder)!r} has no {fp32_path.name}")
    source_name = "calibration_inputs" if calibration_inputs is not None else SAMPLE_INPUTS_FILE
    cases = calibration_inputs if calibration_inputs is not None else load_sample_inputs(folder)
    if not cases:
        raise ValueError("quantize_int8 needs at least one input case to measure the error")
    specs = {s["name"]: np.dtype(s["dtype"]) for s in deploy["inputs"]}
    feeds_list = []
    for i, case in enumerate(cases):
        missing = [n for n in specs if n not in case]
        if missing:
            raise KeyError(f"calibration_inputs[{i}] lacks input(s) {missing}")
        feeds_list.append(
            {n: np.asarray(case[n]).astype(dt, copy=False) for n, dt in specs.items()}
        )

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=folder) as td:
        work = Path(td)
        source, preprocessed = fp32_path, False
        try:
            quant_pre_process(str(fp32_path), str(work / "pre.onnx"))
            source, preprocessed = work / "pre.onnx", True
        except Exception as e:  # symbolic shape inference fails on some graphs; optional step
            warnings.warn(
                f"quant_pre_process failed, quantizing the raw model: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
        q_path = work / INT8_MODEL_FILE
        exclude = final_weighted_nodes(onnx.load(str(source))) if keep_final_float else []
        t0 = time.perf_counter()
        if mode == "dynamic":
            _quantize_dynamic(source, q_path, op_types, exclude)
        else:
            _quantize_static(
                source, q_path, feeds_list, op_types, activation_type, calibrate_method, exclude
            )
        quantize_seconds = time.perf_counter() - t0
        onnx.checker.check_model(str(q_path))

        out_names = [o["name"] for o in deploy["outputs"]]
        fp32_sess, int8_sess = make_session(fp32_path), make_session(q_path)
        per_output = {
            n: {"max_abs_diff": 0.0, "sum_abs": 0.0, "count": 0, "mismatches": 0} for n in out_names
        }
        integer: set[str] = set()
        # outputs whose first axis is data-dependent (a named dynamic axis not shared with
        # an input, like NMS's "detections")
        input_axes = {
            str(a) for spec in deploy["inputs"] for a in spec.get("shape", []) if isinstance(a, str)
        }
        variable = {
            o["name"]
            for o in deploy["outputs"]
            if o.get("shape") and isinstance(o["shape"][0], str) and o["shape"][0] not in input_axes
        }
        for feeds in feeds_list:
            ref = fp32_sess.run(out_names, feeds)
            got = int8_sess.run(out_names, feeds)
            for n, r, g in zip(out_names, ref, got, strict=True):
                e = per_output[n]
                if n in variable:
                    # e.g. detections after NMS: int8 may keep other boxes, in another order,
                    # so element diffs mean nothing; count length changes (judge these by a
                    # task metric such as AP)
                    e["cases"] = e.get("cases", 0) + 1
                    e["length_changed"] = e.get("length_changed", 0) + int(r.shape != g.shape)
                    e["length_diff_sum"] = e.get("length_diff_sum", 0) + abs(
                        (r.shape[0] if r.ndim else 1) - (g.shape[0] if g.ndim else 1)
                    )
                    continue
                if r.shape != g.shape:
                    raise ExportError(f"int8 output {n!r} shape {g.shape} != fp32 {r.shape}")
                e["count"] += r.size
                if r.dtype.kind in "iub":  # class ids: abs diffs are meaningless
                    integer.add(n)
                    e["mismatches"] += int(np.count_nonzero(r != g))
                    continue
                mx, _, mean = _diff_stats(r, g, rel_floor=1e-6)
                e["max_abs_diff"] = max(e["max_abs_diff"], mx)
                e["sum_abs"] += mean * r.size
        del fp32_sess, int8_sess
        floats = [e for n, e in per_output.items() if n not in integer and n not in variable]
        fractions = {
            n: per_output[n]["mismatches"] / max(per_output[n]["count"], 1) for n in integer
        }
        if floats:
            total = sum(e["count"] for e in floats)
            max_abs = max(e["max_abs_diff"] for e in floats)
            mean_abs = sum(e["sum_abs"] for e in floats) / max(total, 1)
            passed = math.isfinite(max_abs) and (atol is None or max_abs < atol)
        else:
            max_abs = mean_abs = math.nan  # written as null
            passed = atol is None or all(f <= atol for f in fractions.values())
        int8_bytes, fp32_bytes = q_path.stat().st_size, fp32_path.stat().st_size
        reports = {n: _output_report(n, e, integer, variable) for n, e in per_output.items()}
        section: dict[str, Any] = {
            "mode": mode,
            "max_abs_diff": _finite_or_none(max_abs),
            "mean_abs_diff": _finite_or_none(mean_abs),
            "per_output": reports,
            "model_bytes": int8_bytes,
            "fp32_model_bytes": fp32_bytes,
            "size_ratio": round(int8_bytes / fp32_bytes, 4),
            "file": INT8_MODEL_FILE,
            "cases": len(feeds_list),
            "cases_from": source_name,
            "weight_type": "QInt8",
            "op_types": op_types,
            "per_channel": True,
            "float_nodes": exclude,
            "preprocessed": preprocessed,
            "quantize_seconds": round(quantize_seconds, 3),
            "atol": atol,
            "passed": passed,
        }
        if mode == "static":
            section["quant_format"] = "QDQ"
            section["activation_type"] = activation_type
            section["calibration"] = {
                "method": calibrate_method,
                "cases": len(feeds_list),
                "source": source_name,
            }
        if passed:
            os.replace(q_path, folder / INT8_MODEL_FILE)

    report_path = folder / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["int8"] = section
    _write_json(report_path, report)
    if not passed:
        # An int8 model from an earlier run must not outlive a failed check of this one.
        if deploy.pop("int8_model_file", None) is not None:
            _write_yaml(folder / DEPLOY_FILE, deploy)
        (folder / INT8_MODEL_FILE).unlink(missing_ok=True)
        measured = (
            f"max_abs_diff={section['max_abs_diff']}"
            if floats
            else f"mismatch_fraction={max(fractions.values())}"
        )
        raise ExportError(
            f"int8 model {measured} vs fp32 exceeds atol={atol}; "
            f"no {INT8_MODEL_FILE} was published (see {report_path})",
            report=report,
        )
    deploy["int8_model_file"] = INT8_MODEL_FILE
    _write_yaml(folder / DEPLOY_FILE, deploy)
    return section


def _output_report(name: str, e: dict[str, Any], integer: set[str], variable: set[str]) -> dict:
    """One output's int8-vs-fp32 entry in the export report."""
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
        "max_abs_diff": _finite_or_none(e["max_abs_diff"]),
        "mean_abs_diff": _finite_or_none(e["sum_abs"] / max(e["count"], 1)),
    }


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def final_weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted nodes from which no other weighted node can be reached: the
    layers that produce the graph's outputs (a detector's head convs, a classifier's fc)."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    finals = []
    for node in nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        seen: set[int] = set()
        stack = [j for out in node.output for j in consumers.get(out, [])]
        reaches = False
        while stack and not reaches:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            if nodes[j].op_type in WEIGHTED_OPS:
                reaches = True
            stack += [k for out in nodes[j].output for k in consumers.get(out, [])]
        if not reaches:
            finals.append(node.name)
    if any(not n for n in finals):
        raise ExportError("keep_final_float needs named ONNX nodes (torch.onnx names them)")
    return finals


def _quantize_dynamic(
    source: Path, q_path: Path, op_types: list[str], exclude: list[str] | None = None
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(q_path),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=op_types,
        nodes_to_exclude=list(exclude or []),
    )


def _quantize_static(
    source: Path,
    q_path: Path,
    feeds_list: list[dict[str, np.ndarray]],
    op_types: list[str],
    activation_type: str,
    calibrate_method: str,
    exclude: list[str] | None = None,
) -> None:
    """Calibrated QDQ quantization (int8 per-channel weights) of ``source`` into ``q_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # The histogram calibrators print progress on stdout, where the CLI writes its JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(source),
            str(q_path),
            _CalibrationReader(feeds_list),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            nodes_to_exclude=list(exclude or []),
            per_channel=True,
            activation_type=getattr(QuantType, activation_type),
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            calibration_providers=["CPUExecutionProvider"],
            # CalibStridedMinMax strides every calibrator despite its name: one case per pass,
            # so histogram methods accept cases of different sizes and never hold every
            # activation of every case at once. Ranges are asymmetric like QUInt8 activations
            # (Percentile's default symmetric range wastes half the levels on ReLU outputs).
            extra_options={"CalibStridedMinMax": 1, "CalibTensorRangeSymmetric": False},
        )
