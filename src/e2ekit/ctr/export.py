"""CTR export: the dense part to ONNX, the slot table as a versioned key -> vector store.

A Criteo-scale table (tens of millions of rows) does not belong in an ONNX graph (2 GB
protobuf limit, and serving wants it in a KV store anyway). So the export folder holds:

- ``model.onnx``: ``dense (B, 13) float32, emb (B, 26, width) float32 -> prob (B,)``, the
  model's dense head with the sigmoid inside (parity-checked vs PyTorch);
- ``sparse/``: the table rows that training touched, in the format below;
- ``deploy.yaml``: hashing, feature transform and table layout, so a server can turn raw
  Criteo rows into the two inputs.

Sparse table format (``sparse/manifest.json``, ``format: e2ekit-ctr-sparse``, version 1):
``keys.npy`` int64 ``(N,)`` sorted ascending, key = ``slot * hash_size + bucket`` with
``slot`` in 0..25 (C1..C26) and ``bucket`` the per-slot hashed id (0 = missing value);
``values.npy`` float32 ``(N, width)``, row i is the vector of key i. When the model has a
first-order term, column 0 is its weight and columns 1.. the embedding. A key not in the
store looks up ``default`` (zeros). ``model_version`` names the checkpoint (step and,
when streaming, the partition) so a KV loader can tell versions apart.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2ekit.core.engine.task import ExportSpec
from e2ekit.core.fileio import atomic_write_json, replace_folder
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE
from e2ekit.ctr.models.zoo import CtrModel

SPARSE_FORMAT = "e2ekit-ctr-sparse"
SPARSE_VERSION = 1
HASHING = (
    "per-slot FNV-1a 64 over the raw string, mixed with the slot index (splitmix64), "
    "bucket = h % (hash_size - 1) + 1; empty = bucket 0 (e2ekit.ctr.data.criteo.hash_strings)"
)


class DenseHead(nn.Module):
    """The exported graph: looked-up rows + dense features -> click probability."""

    def __init__(self, model: CtrModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.head(dense, emb))


def sample_inputs(model: CtrModel, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic example inputs: log1p-like dense values and real table rows."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, N_DENSE, generator=g) * 5
    ids = torch.randint(0, model.hash_size, (n, N_SPARSE), generator=g)
    with torch.no_grad():
        emb = model.tables(ids)
    return {"dense": dense, "emb": emb.float()}


def calibration_inputs(model: CtrModel, cfg: CtrConfig, n: int) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` real rows of ``data.val`` (else ``data.train``) as export inputs, to
    calibrate static int8 on the value ranges the model really sees."""
    from e2ekit.ctr.data.splits import make_stream, split_paths

    paths = split_paths(cfg, "val") or split_paths(cfg, "train")
    if paths is None:
        return []
    out: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for batch in make_stream(cfg, paths, train=False, batch_size=min(n, 256)):
            emb = model.tables(batch["sparse"]).float()
            for i in range(len(batch["label"])):
                row = {"dense": batch["dense"][i : i + 1], "emb": emb[i : i + 1]}
                out.append({k: v.numpy() for k, v in row.items()})
                if len(out) >= n:
                    return out
    return out


def deploy_info(model: CtrModel, cfg: CtrConfig, version: str) -> dict[str, Any]:
    return {
        "kit": "ctr",
        "task": "ctr",
        "model_type": cfg.model.type,
        "model_version": version,
        "num_dense": N_DENSE,
        "num_slots": N_SPARSE,
        "hash_size": model.hash_size,
        "width": model.width,
        "first_order": model.first_order,
        "dense_transform": "log(x + 1) for integer x >= 0, else 0; missing = 0",
        "hashing": HASHING,
        "sparse": {"dir": "sparse", "format": SPARSE_FORMAT, "version": SPARSE_VERSION},
        "output": "prob: click probability per row",
    }


def export_spec(model: CtrModel, cfg: CtrConfig, version: str = "unversioned") -> ExportSpec:
    head = DenseHead(model).eval()
    example = sample_inputs(model, cfg.export.sample_batch)
    parity = [sample_inputs(model, 3, seed=1), sample_inputs(model, 64, seed=2)]
    return ExportSpec(
        module=head,
        example_inputs=example,
        output_names=["prob"],
        dynamic_axes={"dense": {0: "batch"}, "emb": {0: "batch"}, "prob": {0: "batch"}},
        deploy=deploy_info(model, cfg, version),
        parity_inputs=parity,
    )


def write_sparse_tables(
    model: CtrModel, out_dir: Path, rows: torch.Tensor | None, version: str
) -> dict[str, Any]:
    """Write ``sparse/`` (keys, values, manifest) for ``rows`` (None = every row)."""
    table = model.tables.embedding.weight.detach()
    keys = torch.arange(table.shape[0]) if rows is None else torch.sort(rows.long()).values
    folder = out_dir / "sparse"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "keys.npy", keys.numpy().astype(np.int64))
    np.save(folder / "values.npy", table.index_select(0, keys).numpy().astype(np.float32))
    manifest = {
        "format": SPARSE_FORMAT,
        "format_version": SPARSE_VERSION,
        "model_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_slots": N_SPARSE,
        "hash_size": model.hash_size,
        "width": model.width,
        "columns": (["first_order"] if model.first_order else [])
        + [f"emb{i}" for i in range(model.embed_dim)],
        "key": "slot * hash_size + bucket (slot 0..25 = C1..C26, bucket 0 = missing)",
        "rows": int(keys.numel()),
        "table_rows": int(table.shape[0]),
        "keys_file": "keys.npy",
        "values_file": "values.npy",
        "dtype": "float32",
        "default": "zeros",
        "hashing": HASHING,
    }
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def export_model(
    model: CtrModel,
    cfg: CtrConfig,
    out_dir: str | Path,
    *,
    rows: torch.Tensor | None = None,
    version: str = "unversioned",
    quiet: bool = False,
) -> dict[str, Any]:
    """Export into ``out_dir`` atomically (a temp sibling swapped into place); the report.

    The whole folder is replaced, not merged: ``sparse/`` of an older export must not mix
    with this one's.
    """
    import logging

    from e2ekit.core.logs import log

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)
    try:
        spec = export_spec(model, cfg, version)
        spec.assets = lambda folder: write_sparse_tables(model, folder, rows, version)
        report = spec.export(tmp, opset=cfg.export.opset, atol=cfg.export.atol)
        replace_folder(tmp, out)
    finally:
        log.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
        model.train()
    return report
