"""Reading and editing the exported ONNX graph: its I/O contract and appended ArgMax nodes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

FLOAT_ELEM_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


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


def io_specs(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """deploy.yaml's ``inputs`` / ``outputs``: name, dtype, shape (initializers excluded)."""
    initializers = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        elem = v.type.tensor_type.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
        return {"name": v.name, "dtype": dtype, "shape": _dims(v.type)}

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def append_argmax(
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
        if elem not in FLOAT_ELEM_TYPES:
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
