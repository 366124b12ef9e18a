"""Building an int8 ONNX model with onnxruntime's quantizer (dynamic or static/QDQ).

The steps :func:`~e2ekit.core.export.quantize_int8` runs before it measures anything: an
optional pre-processing pass, the choice of nodes kept float, and the quantization itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from e2ekit.core.export.errors import ExportError

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


@dataclass(frozen=True)
class Int8Build:
    """The built (not yet checked) int8 model and how it was made, for the report."""

    path: Path
    float_nodes: list[str]
    preprocessed: bool
    seconds: float


def build_int8(
    fp32_path: Path,
    work: Path,
    q_name: str,
    *,
    mode: str,
    feeds_list: list[dict[str, np.ndarray]],
    op_types: list[str],
    activation_type: str,
    calibrate_method: str,
    keep_final_float: bool,
) -> Int8Build:
    """Quantize ``fp32_path`` into ``work / q_name``; the ONNX checker has passed on it.

    ``seconds`` times the quantizer alone (pre-processing and node selection excluded), the
    number worth comparing between modes.
    """
    source, preprocessed = preprocess(fp32_path, work / "pre.onnx")
    q_path = work / q_name
    exclude = final_weighted_nodes(onnx.load(str(source))) if keep_final_float else []
    t0 = time.perf_counter()
    if mode == "dynamic":
        quantize_dynamic(source, q_path, op_types, exclude)
    else:
        quantize_static(
            source, q_path, feeds_list, op_types, activation_type, calibrate_method, exclude
        )
    seconds = time.perf_counter() - t0
    onnx.checker.check_model(str(q_path))
    return Int8Build(q_path, exclude, preprocessed, seconds)


@contextlib.contextmanager
def working_dir(path: str | Path) -> Iterator[None]:
    """``os.chdir`` into ``path`` for the block (the export is one step of one process)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def preprocess(fp32_path: Path, out_path: Path) -> tuple[Path, bool]:
    """onnxruntime's recommended pre-pass (shape inference, folding), when the graph allows.

    Symbolic shape inference fails on some graphs (a two-stage detector's data-dependent
    proposal counts); the pass is then retried with ONNX's own shape inference only, which
    still gives the quantizer the shapes and folded graph it needs to pair every Conv with
    its Q/DQ nodes (without it, most of Faster R-CNN's convolutions stayed float). If that
    fails too, the raw model is quantized, with a warning. Returns the model to quantize and
    whether it was pre-processed.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    errors = []
    for skip_symbolic in (False, True):
        try:
            # symbolic shape inference saves a debug model (and external-data files) into
            # the working directory when it fails: run from a scratch folder, then removed
            with (
                tempfile.TemporaryDirectory(prefix="e2ekit-quant-") as scratch,
                working_dir(scratch),
            ):
                quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=skip_symbolic)
            return out_path, True
        except Exception as e:
            errors.append(str(e))
    warnings.warn(
        f"quant_pre_process failed, quantizing the raw model: {'; '.join(errors)}",
        RuntimeWarning,
        stacklevel=4,  # the caller of quantize_int8
    )
    return fp32_path, False


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


class CalibrationReader:
    """A ``CalibrationDataReader`` over feed dicts (onnxruntime duck-types the interface).

    ``set_range`` serves a window of the cases: :func:`quantize_static` has onnxruntime
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


def quantize_dynamic(
    source: Path, q_path: Path, op_types: list[str], exclude: list[str] | None = None
) -> None:
    """int8 per-channel weights, activations quantized at run time: no data needed."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(
        str(source),
        str(q_path),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=op_types,
        nodes_to_exclude=list(exclude or []),
    )


def quantize_static(
    source: Path,
    q_path: Path,
    feeds_list: list[dict[str, np.ndarray]],
    op_types: list[str],
    activation_type: str,
    calibrate_method: str,
    exclude: list[str] | None = None,
) -> None:
    """Calibrated QDQ quantization (int8 per-channel weights) of ``source`` into ``q_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    # The histogram calibrators print progress on stdout, where the CLI writes its JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        ort_quantize_static(
            str(source),
            str(q_path),
            CalibrationReader(feeds_list),
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
