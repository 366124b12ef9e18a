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

Modules, one concern each: :mod:`.onnx_export` (torch -> ONNX), :mod:`.onnx_graph` (I/O
specs, ArgMax), :mod:`.parity` (ONNX Runtime vs PyTorch), :mod:`.torch_builder` (the torch
backend's builder and weights), :mod:`.publish` (the folder on disk), :mod:`.quantize` (int8).
"""

from e2ekit.core.export.errors import ExportError
from e2ekit.core.export.onnx_export import export_onnx
from e2ekit.core.export.parity import ARGMAX_MISMATCH_TOL
from e2ekit.core.export.publish import FAILED_SUFFIX, INT8_MODEL_FILE, MODEL_FILE, REPORT_FILE
from e2ekit.core.export.quantize import (
    ACTIVATION_TYPES,
    CALIBRATE_METHODS,
    DYNAMIC_OP_TYPES,
    QUANT_MODES,
    STATIC_OP_TYPES,
    quantize_int8,
)
from e2ekit.core.export.quantize_build import WEIGHTED_OPS, final_weighted_nodes
from e2ekit.core.export.validate import RESERVED_DEPLOY_KEYS

__all__ = [
    "ACTIVATION_TYPES",
    "ARGMAX_MISMATCH_TOL",
    "CALIBRATE_METHODS",
    "DYNAMIC_OP_TYPES",
    "FAILED_SUFFIX",
    "INT8_MODEL_FILE",
    "MODEL_FILE",
    "QUANT_MODES",
    "REPORT_FILE",
    "RESERVED_DEPLOY_KEYS",
    "STATIC_OP_TYPES",
    "WEIGHTED_OPS",
    "ExportError",
    "export_onnx",
    "final_weighted_nodes",
    "quantize_int8",
]
