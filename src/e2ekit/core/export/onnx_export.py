"""torch -> ONNX: :func:`export_onnx` writes, checks and publishes one export folder.

Each claim about the model (the graph keeps every input, ONNX matches PyTorch on other
shapes, the argmax serves the same class ids, the torch builder rebuilds the module) is
measured here and written to ``export_report.json``; a failed claim publishes nothing.
"""

from __future__ import annotations

import platform
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from e2ekit.core.export.errors import ExportError
from e2ekit.core.export.onnx_graph import append_argmax, io_specs
from e2ekit.core.export.parity import (
    argmax_failures,
    argmax_parity,
    onnx_parity,
    parity_failure,
)
from e2ekit.core.export.publish import (
    MODEL_FILE,
    REPORT_FILE,
    keep_failed,
    publish,
    staging_dir,
    write_json,
    write_sample_inputs,
    write_yaml,
)
from e2ekit.core.export.torch_builder import check_rebuild, save_weights, torch_deploy_section
from e2ekit.core.export.validate import validate_export_args
from e2ekit.core.infer import DEPLOY_FILE, FORMAT_VERSION, WEIGHTS_FILE, flatten_outputs


class ExportAdapter(nn.Module):
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
    validate_export_args(
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
    tmp_dir = staging_dir(out_dir)
    was_training = module.training
    module.eval()
    adapter = ExportAdapter(module, output_names).eval()
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
        failed_dir = keep_failed(tmp_dir, out_dir)
        raise ExportError(
            "; ".join(failures)
            + f". Nothing was written to {str(out_dir)!r}; the failed model and "
            f"{REPORT_FILE} are in {str(failed_dir)!r}",
            report=report,
            artifacts_dir=failed_dir,
        )
    try:
        publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return report


def _export_into(
    adapter: ExportAdapter,
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
    export_seconds = _torch_to_onnx(
        adapter, cases[0], model_path, input_names, output_names, export_axes, opset
    )
    model = onnx.load(str(model_path), load_external_data=False)
    in_specs, out_specs = _checked_io_specs(model, input_names, output_names)

    failures: list[str] = []
    parity, refs = onnx_parity(
        adapter, model_path, cases, input_names, output_names, atol, keep=argmax
    )
    if not parity["passed"]:
        failures.append(parity_failure(parity, atol))

    argmax_report: dict[str, Any] = {}
    if argmax:
        axes = append_argmax(model, model_path, refs, argmax, argmax_axis, argmax_dims)
        argmax_report = argmax_parity(model_path, cases, input_names, refs, argmax, axes, parity)
        failures += argmax_failures(argmax_report)
        in_specs, out_specs = io_specs(onnx.load(str(model_path), load_external_data=False))

    report = _base_report(folder, parity, opset, export_seconds)
    if argmax:
        report["argmax"] = argmax_report

    write_sample_inputs(folder, cases, dynamic_axes)

    deploy_out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **deploy,
        "model_file": MODEL_FILE,
        "inputs": in_specs,
        "outputs": out_specs,
        "opset": opset,
    }
    if torch_builder is not None:
        save_weights(adapter.module, folder / WEIGHTS_FILE)
        rebuild = check_rebuild(
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
        deploy_out["torch"] = torch_deploy_section(
            torch_builder, builder_config, output_names, argmax, argmax_axis
        )

    report["_failures"] = failures
    write_json(folder / REPORT_FILE, {k: v for k, v in report.items() if k != "_failures"})
    write_yaml(folder / DEPLOY_FILE, deploy_out)
    return report


def _torch_to_onnx(
    adapter: ExportAdapter,
    case: dict[str, torch.Tensor],
    model_path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> float:
    """Trace ``adapter`` on ``case`` into ``model_path`` and run the ONNX checker; seconds."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # torch warns that the TorchScript exporter is legacy; it is chosen deliberately
        # (no onnxscript dependency, mature dynamic_axes support).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message="The feature will be removed"
        )
        # Benign tracing notes (shape-dependent Python branches, Slice folding); the parity
        # check on other batch/spatial/sequence sizes is what proves the graph.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            adapter,
            tuple(case[n] for n in input_names),
            str(model_path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(model_path))  # path form also handles >2 GB models
    return time.perf_counter() - t0


def _checked_io_specs(
    model: onnx.ModelProto, input_names: list[str], output_names: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's I/O specs; an input the tracer dropped (unused by the model) is an error,
    since a server would then reject the requests the kit's preprocessing produces."""
    in_specs, out_specs = io_specs(model)
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
    return in_specs, out_specs


def _base_report(
    folder: Path, parity: dict[str, Any], opset: int, export_seconds: float
) -> dict[str, Any]:
    """Parity plus what produced it (versions, timing, size of the model files so far)."""
    return {
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
