"""int8: add ``model.int8.onnx`` to an export folder only once its error is measured.

:func:`quantize_int8` runs named steps: check the options, prepare the input cases, build the
int8 model (:mod:`.quantize_build`), measure it against fp32 (:mod:`.quantize_check`), write
the report section, then publish the model or withdraw an older one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.export.diff import finite_or_none
from e2ekit.core.export.errors import ExportError
from e2ekit.core.export.publish import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    REPORT_FILE,
    update_report,
    write_yaml,
)
from e2ekit.core.export.quantize_build import Int8Build, build_int8
from e2ekit.core.export.quantize_check import (
    Int8Summary,
    compare_int8,
    output_reports,
    summarize,
)
from e2ekit.core.infer import (
    DEPLOY_FILE,
    SAMPLE_INPUTS_FILE,
    ExportFolderError,
    load_deploy,
    load_sample_inputs,
)

QUANT_MODES = ("dynamic", "static")
# Dynamic: matrix multiplies only; onnxruntime's dynamic ConvInteger is slower than fp32 conv.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
# Static (QDQ): convolutions run as fused int8 kernels. Quantizing every op type (Add, Mul,
# Resize, Concat...) measured no faster than this on the seg model and costs more accuracy.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
ACTIVATION_TYPES = ("QUInt8", "QInt8")
CALIBRATE_METHODS = ("MinMax", "Percentile", "Entropy")


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
    op_types = _checked_options(mode, activation_type, calibrate_method, op_types)
    folder = Path(export_dir)
    deploy = load_deploy(folder)
    fp32_path = folder / deploy.get("model_file", MODEL_FILE)
    if not fp32_path.is_file():
        raise ExportFolderError(f"export folder {str(folder)!r} has no {fp32_path.name}")
    source_name = "calibration_inputs" if calibration_inputs is not None else SAMPLE_INPUTS_FILE
    cases = calibration_inputs if calibration_inputs is not None else load_sample_inputs(folder)
    feeds_list = _feeds(deploy, cases)

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=folder) as td:
        build = build_int8(
            fp32_path,
            Path(td),
            INT8_MODEL_FILE,
            mode=mode,
            feeds_list=feeds_list,
            op_types=op_types,
            activation_type=activation_type,
            calibrate_method=calibrate_method,
            keep_final_float=keep_final_float,
        )
        diff = compare_int8(fp32_path, build.path, deploy, feeds_list)
        summary = summarize(diff, atol)
        section = _int8_section(
            build,
            summary,
            output_reports(diff),
            fp32_bytes=fp32_path.stat().st_size,
            mode=mode,
            cases=len(feeds_list),
            source_name=source_name,
            op_types=op_types,
            atol=atol,
            activation_type=activation_type,
            calibrate_method=calibrate_method,
        )
        if summary.passed:  # moved out before the work folder goes; announced below
            os.replace(build.path, folder / INT8_MODEL_FILE)

    report = update_report(folder, "int8", section)
    if not summary.passed:
        _withdraw_int8(folder, deploy)
        raise ExportError(_failure_message(section, summary, atol, folder), report=report)
    _announce_int8(folder, deploy)
    return section


def _checked_options(
    mode: str, activation_type: str, calibrate_method: str, op_types: Sequence[str] | None
) -> list[str]:
    """Reject unknown settings before any work; returns the op types (mode's default if
    none given), since a typo would otherwise surface deep inside onnxruntime."""
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
    return op_types


def _feeds(deploy: dict[str, Any], cases: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """The cases as onnxruntime feeds in deploy.yaml's input dtypes: the same feeds calibrate
    the static quantizer and measure the error, so both see exactly what a server would."""
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
    return feeds_list


def _int8_section(
    build: Int8Build,
    summary: Int8Summary,
    per_output: dict[str, dict[str, Any]],
    *,
    fp32_bytes: int,
    mode: str,
    cases: int,
    source_name: str,
    op_types: list[str],
    atol: float | None,
    activation_type: str,
    calibrate_method: str,
) -> dict[str, Any]:
    """The report's ``int8`` section: error, size, and every setting that produced them."""
    int8_bytes = build.path.stat().st_size
    section: dict[str, Any] = {
        "mode": mode,
        "max_abs_diff": finite_or_none(summary.max_abs_diff),
        "mean_abs_diff": finite_or_none(summary.mean_abs_diff),
        "per_output": per_output,
        "model_bytes": int8_bytes,
        "fp32_model_bytes": fp32_bytes,
        "size_ratio": round(int8_bytes / fp32_bytes, 4),
        "file": INT8_MODEL_FILE,
        "cases": cases,
        "cases_from": source_name,
        "weight_type": "QInt8",
        "op_types": op_types,
        "per_channel": True,
        "float_nodes": build.float_nodes,
        "preprocessed": build.preprocessed,
        "quantize_seconds": round(build.seconds, 3),
        "atol": atol,
        "passed": summary.passed,
    }
    if mode == "static":
        section["quant_format"] = "QDQ"
        section["activation_type"] = activation_type
        section["calibration"] = {"method": calibrate_method, "cases": cases, "source": source_name}
    return section


def _announce_int8(folder: Path, deploy: dict[str, Any]) -> None:
    """Name the int8 model in deploy.yaml, last: servers offer int8 only once it is checked."""
    deploy["int8_model_file"] = INT8_MODEL_FILE
    write_yaml(folder / DEPLOY_FILE, deploy)


def _withdraw_int8(folder: Path, deploy: dict[str, Any]) -> None:
    """An int8 model from an earlier run must not outlive a failed check of this one."""
    if deploy.pop("int8_model_file", None) is not None:
        write_yaml(folder / DEPLOY_FILE, deploy)
    (folder / INT8_MODEL_FILE).unlink(missing_ok=True)


def _failure_message(
    section: dict[str, Any], summary: Int8Summary, atol: float | None, folder: Path
) -> str:
    measured = (
        f"max_abs_diff={section['max_abs_diff']}"
        if summary.has_floats
        else f"mismatch_fraction={max(summary.mismatch_fractions.values())}"
    )
    return (
        f"int8 model {measured} vs fp32 exceeds atol={atol}; "
        f"no {INT8_MODEL_FILE} was published (see {folder / REPORT_FILE})"
    )
