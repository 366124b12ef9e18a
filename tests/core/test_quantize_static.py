"""Static (calibrated QDQ) int8 quantization of an export folder; the dynamic path's defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from e2ekit.core.export import (
    DYNAMIC_OP_TYPES,
    STATIC_OP_TYPES,
    ExportError,
    export_onnx,
    quantize_int8,
)
from e2ekit.core.infer import Predictor

from .test_export import ConvNet, _export_mlp, _export_seg


def _images(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Calibration cases of mixed spatial sizes, one image per batch (as the seg hook gives)."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (24, 40)]
    return [
        {"image": rng.standard_normal((1, 3, *sizes[i % 2])).astype(np.float32)} for i in range(n)
    ]


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_quantize_argmax_model(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_seg(out)
    section = quantize_int8(out, mode="static", calibration_inputs=_images(8))
    assert section["mode"] == "static" and section["passed"]
    assert section["quant_format"] == "QDQ" and section["activation_type"] == "QUInt8"
    assert section["op_types"] == list(STATIC_OP_TYPES) and section["weight_type"] == "QInt8"
    assert section["calibration"] == {
        "method": "Percentile",
        "cases": 8,
        "source": "calibration_inputs",
    }
    assert section["cases"] == 8 and section["max_abs_diff"] is None
    frac = section["per_output"]["label_map"]["mismatch_fraction"]
    assert 0.0 <= frac < 0.05  # class ids of near-ties may flip, not whole maps
    assert json.loads((out / "export_report.json").read_text())["int8"] == section
    assert yaml.safe_load((out / "deploy.yaml").read_text())["int8_model_file"] == "model.int8.onnx"
    ops = _op_types(out / "model.int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ArgMax" in ops

    image = np.random.default_rng(9).standard_normal((2, 3, 20, 28)).astype(np.float32)
    q = Predictor(out, precision="int8")({"image": image})["label_map"]
    ref = Predictor(out)({"image": image})["label_map"]
    assert q.dtype == np.int64 and q.shape == (2, 20, 28)
    assert (q == ref).mean() > 0.9


def test_static_float_outputs_sample_inputs_and_atol(tmp_path: Path) -> None:
    torch.manual_seed(3)
    out = tmp_path / "export"
    export_onnx(
        ConvNet(),
        {"image": torch.randn(2, 3, 32, 32)},
        out,
        output_names=["logits", "pooled"],
        dynamic_axes={
            "image": {0: "batch", 2: "h", 3: "w"},
            "logits": {0: "batch", 2: "h", 3: "w"},
        },
        deploy={},
        parity_inputs=[{"image": torch.randn(1, 3, 24, 40)}],
    )
    section = quantize_int8(out, mode="static", calibrate_method="MinMax")
    # no calibration inputs: the folder's sample_inputs.npz (its two parity cases)
    assert section["calibration"] == {
        "method": "MinMax",
        "cases": 2,
        "source": "sample_inputs.npz",
    }
    assert math.isfinite(section["max_abs_diff"]) and section["passed"]
    assert set(section["per_output"]["logits"]) == {"max_abs_diff", "mean_abs_diff"}
    assert "QuantizeLinear" in _op_types(out / "model.int8.onnx")

    # a tolerance it cannot meet: nothing published and the earlier int8 model withdrawn
    with pytest.raises(ExportError, match="max_abs_diff"):
        quantize_int8(out, mode="static", atol=1e-9)
    assert not (out / "model.int8.onnx").exists()
    assert "int8_model_file" not in yaml.safe_load((out / "deploy.yaml").read_text())
    report = json.loads((out / "export_report.json").read_text())["int8"]
    assert report["mode"] == "static" and report["passed"] is False


def test_dynamic_defaults_unchanged_then_static_gemm(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_mlp(out)
    section = quantize_int8(out)
    assert section["mode"] == "dynamic" and section["op_types"] == list(DYNAMIC_OP_TYPES)
    assert "calibration" not in section and section["cases_from"] == "sample_inputs.npz"
    assert "DynamicQuantizeLinear" in _op_types(out / "model.int8.onnx")

    static = quantize_int8(out, mode="static")  # replaces the dynamic model
    assert static["mode"] == "static" and static["passed"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(out / "model.int8.onnx")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(
        Predictor(out, precision="int8")({"x": x})["y"], Predictor(out)({"x": x})["y"], atol=0.1
    )


def test_static_rejects_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export_seg(out)
    for kwargs, err in [
        ({"mode": "qat"}, "unknown quantization mode"),
        ({"activation_type": "QFloat8"}, "unknown activation_type"),
        ({"calibrate_method": "Mean"}, "unknown calibrate_method"),
        ({"op_types": []}, "op_types"),
    ]:
        with pytest.raises(ValueError, match=err):
            quantize_int8(out, **{"mode": "static", **kwargs})
    with pytest.raises(KeyError, match="lacks input"):
        quantize_int8(out, mode="static", calibration_inputs=[{"x": np.zeros((1, 3, 8, 8))}])
    with pytest.raises(ValueError, match="at least one input case"):
        quantize_int8(out, mode="static", calibration_inputs=[])
    assert not (out / "model.int8.onnx").exists()


def _float_weight_convs(path: Path) -> list[str]:
    """Conv nodes whose weight does not come out of a DequantizeLinear (left in float)."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            src = producers.get(n.input[1])
            if src is None or src.op_type != "DequantizeLinear":
                out.append(n.name)
    return out


def test_static_keep_final_float(tmp_path: Path) -> None:
    """Only the head conv (no weighted layer after it) stays float; the body convs are int8."""
    torch.manual_seed(3)
    out = tmp_path / "export"
    export_onnx(
        ConvNet(),
        {"image": torch.randn(1, 3, 32, 32)},
        out,
        output_names=["logits", "pooled"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        deploy={},
    )
    section = quantize_int8(out, mode="static", calibration_inputs=_images(4)[:1])
    assert section["float_nodes"] == [] and _float_weight_convs(out / "model.int8.onnx") == []
    section = quantize_int8(
        out, mode="static", calibration_inputs=_images(4)[:1], keep_final_float=True
    )
    assert len(section["float_nodes"]) == 1 and section["passed"]
    assert _float_weight_convs(out / "model.int8.onnx") == section["float_nodes"]
    convs = [n for n in onnx.load(str(out / "model.int8.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3  # two int8 body convs + the float head


def test_padded_outputs_are_compared_by_their_counts() -> None:
    """NMS padded to a fixed size: int8 keeping another number of boxes for an image is a
    changed count for that image, and the padded rows are not diffed element by element."""
    from e2ekit.core.export.quantize_check import Int8Diff, _accumulate_counts, padded_outputs

    deploy = {
        "outputs": [{"name": "boxes"}, {"name": "scores"}, {"name": "num_detections"}],
        "count_output": "num_detections",
    }
    count, padded = padded_outputs(deploy)
    assert count == "num_detections" and padded == {"boxes", "scores"}
    assert padded_outputs({"outputs": [{"name": "boxes"}]}) == (None, set())
    diff = Int8Diff(per_output={"boxes": {}}, variable=padded)
    _accumulate_counts(diff, "boxes", np.array([3, 0, 5]), np.array([3, 1, 4]))
    _accumulate_counts(diff, "boxes", np.array([2]), np.array([2]))
    entry = diff.per_output["boxes"]
    assert (entry["cases"], entry["length_changed"], entry["length_diff_sum"]) == (4, 2, 2)


def test_a_failed_preprocess_leaves_nothing_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's symbolic shape inference saves a debug model into the working directory
    when it fails; the export runs it elsewhere and quantizes the raw model, warning."""
    import onnxruntime.quantization.shape_inference as shape_inference

    from e2ekit.core.export.quantize_build import preprocess

    def failing(model: str, out: str, skip_symbolic_shape: bool = False) -> None:
        Path("sym_shape_infer_temp.onnx").write_bytes(b"debug")  # as onnxruntime does
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(shape_inference, "quant_pre_process", failing)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model = tmp_path / "model.onnx"
    with pytest.warns(RuntimeWarning, match="quant_pre_process failed"):
        used, done = preprocess(model, tmp_path / "pre.onnx")
    assert used == model.resolve() and not done
    assert Path.cwd() == work and not any(work.iterdir())


def test_preprocess_retries_without_symbolic_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph symbolic inference cannot take (a detector's data-dependent counts) is still
    pre-processed with ONNX's shape inference, so its convolutions pair with Q/DQ nodes."""
    import onnxruntime.quantization.shape_inference as shape_inference

    from e2ekit.core.export.quantize_build import preprocess

    calls = []

    def picky(model: str, out: str, skip_symbolic_shape: bool = False) -> None:
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise RuntimeError("Incomplete symbolic shape inference")
        Path(out).write_bytes(b"pre-processed")

    monkeypatch.setattr(shape_inference, "quant_pre_process", picky)
    out = tmp_path / "pre.onnx"
    used, done = preprocess(tmp_path / "model.onnx", out)
    assert calls == [False, True] and done and used == out.resolve() and out.is_file()
