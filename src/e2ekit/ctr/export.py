"""CTR export: the dense part to ONNX, the slot table as a versioned key -> vector store.

A Criteo-scale table (tens of millions of rows) does not belong in an ONNX graph (2 GB
protobuf limit, and serving wants it in a KV store anyway). So the export folder holds:

- ``model.onnx``: ``dense (B, num_dense) float32, emb (B, fields, width) float32 -> prob
  (B,)``, the model's dense head with the sigmoid inside (parity-checked vs PyTorch); Criteo:
  13 dense, 26 fields;
- ``sparse/``: the table rows that training touched, as a key -> vector snapshot folder;
- ``deploy.yaml``: hashing, feature transform, the feature schema and the table layout
  (slots, their hash sizes, which field each slot pools into), so a server can turn raw rows
  into the two inputs.

``sparse/`` is a snapshot folder (``format: e2ekit-ctr-snapshots``, see
:mod:`e2ekit.ctr.kv.snapshots`) holding one base version named after the model version
(``step-12``; with a streaming partition ``step-12-20261101-00``), and deploy.yaml's
``sparse`` entry names its format and version. Key = ``offset[slot] + bucket`` (with one
hash size for all slots: ``slot * hash_size + bucket``; Criteo: ``slot`` in 0..25 = C1..C26)
and ``bucket`` the per-slot hashed id (0 = missing value); a
row is float32 ``(width,)``: when the model has a first-order term, column 0 is its weight
and columns 1.. the embedding. A key not in the store looks up zeros. Each version's
``meta`` names its dense model (``dense``: a file of the export folder), so a server
swapping in a newer version loads the dense graph trained with that table.

Exports made before snapshots hold ``sparse/`` in ``format: e2ekit-ctr-sparse`` (one
``keys.npy`` / ``values.npy`` pair); the runner still reads them.

Training with ``export.snapshots`` publishes into one serving folder (:class:`Publisher`):
``dense/<version>.onnx`` per version, the ``sparse/`` snapshot folder (a base, then deltas
of the rows changed since the previous version) and deploy.yaml naming the newest pair,
written in that order so a reader never pairs a dense model with another version's table.
After each version, ``export.snapshot_keep`` bounds the folder: older versions that no kept
version's chain reads are removed (manifest first, then their files).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from e2ekit.core.engine.task import ExportSpec
from e2ekit.core.errors import ConfigError
from e2ekit.core.export.publish import write_yaml
from e2ekit.core.fileio import replace_folder
from e2ekit.core.infer import DEPLOY_FILE, SAMPLE_INPUTS_FILE
from e2ekit.core.logs import log
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.features import schema_of
from e2ekit.ctr.kv.snapshots import SNAPSHOT_FORMAT, SnapshotWriter
from e2ekit.ctr.models.zoo import CtrModel

SPARSE_FORMAT = "e2ekit-ctr-sparse"  # exports made before snapshots (read, no longer written)
SPARSE_VERSION = 1
SPARSE_DIR = "sparse"
DENSE_DIR = "dense"
MODEL_FILE = "model.onnx"
HASHING = (
    "per-slot FNV-1a 64 over the raw string, mixed with the slot index (splitmix64), "
    "bucket = h % (hash_size - 1) + 1; empty = bucket 0 (e2ekit.ctr.data.criteo.hash_strings)"
)

CROSS_HASHING = (
    "; a cross = splitmix64 over its columns' buckets and its index, bucket = h % "
    "(hash_size - 1) + 1, 0 when a column is missing (e2ekit.ctr.features.add_crosses)"
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
    layout = model.layout
    dense = torch.rand(n, layout.num_dense, generator=g) * 5
    sizes = torch.tensor(layout.slot_hash, dtype=torch.float64)
    ids = (torch.rand(n, layout.num_slots, generator=g, dtype=torch.float64) * sizes).long()
    with torch.no_grad():
        emb = model.pool(model.tables(ids), ids)
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
            emb = model.pool(model.tables(batch["sparse"]), batch["sparse"]).float()
            for i in range(len(batch["label"])):
                row = {"dense": batch["dense"][i : i + 1], "emb": emb[i : i + 1]}
                out.append({k: v.numpy() for k, v in row.items()})
                if len(out) >= n:
                    return out
    return out


def deploy_info(model: CtrModel, cfg: CtrConfig, version: str) -> dict[str, Any]:
    schema = schema_of(cfg)
    return {
        "kit": "ctr",
        "task": "ctr",
        "model_type": cfg.model.type,
        "model_version": version,
        "num_dense": model.layout.num_dense,
        "num_slots": model.layout.num_slots,
        "num_fields": model.layout.num_fields,
        "hash_size": model.hash_size,  # null when columns have their own hash sizes
        "width": model.width,
        "first_order": model.first_order,
        "schema": schema.model_dump(mode="json"),
        "layout": model.layout.to_dict(),
        "dense_transform": (
            "per column: data.schema transform (log1p: log(x + 1) for x >= 0, else 0; "
            "none: as written); missing = 0"
            if schema.custom
            else "log(x + 1) for integer x >= 0, else 0; missing = 0"
        ),
        "hashing": HASHING + (CROSS_HASHING if schema.crosses else ""),
        "sparse": {"dir": SPARSE_DIR, "format": SNAPSHOT_FORMAT, "version": version},
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


def table_rows(model: CtrModel, rows: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 keys and their float32 rows: ``rows`` of the table (None = every row)."""
    table = model.tables.embedding.weight.detach()
    keys = torch.arange(table.shape[0]) if rows is None else torch.sort(rows.long().cpu()).values
    values = table.index_select(0, keys.to(table.device)).cpu().numpy().astype(np.float32)
    return keys.numpy().astype(np.int64), values


def version_meta(model: CtrModel, version: str, dense: str) -> dict[str, Any]:
    """What a sparse version records beside its rows: its dense model and the table layout
    (key = offset[slot] + bucket; deploy.yaml says how raw values hash)."""
    return {
        "model_version": version,
        "dense": dense,
        "hash_size": model.hash_size,
        "slot_hash": list(model.layout.slot_hash),
        "columns": (["first_order"] if model.first_order else [])
        + [f"emb{i}" for i in range(model.embed_dim)],
    }


def write_sparse_tables(
    model: CtrModel, out_dir: Path, rows: torch.Tensor | None, version: str
) -> dict[str, Any]:
    """Write ``sparse/`` as a snapshot folder with one base version ``version`` holding
    ``rows`` (None = every row); returns the version's manifest entry."""
    keys, values = table_rows(model, rows)
    writer = SnapshotWriter(out_dir / SPARSE_DIR)
    return writer.write_base(keys, values, version, version_meta(model, version, MODEL_FILE))


@contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    level = log.level
    if enabled:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


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
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    try:
        with _quiet(quiet):
            spec = export_spec(model, cfg, version)
            spec.assets = lambda folder: write_sparse_tables(model, folder, rows, version)
            report = spec.export(tmp, opset=cfg.export.opset, atol=cfg.export.atol)
            replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.train()
    return report


class Publisher:
    """Publishes servable versions of a training model into one folder (``export.snapshots``).

    Each :meth:`publish` exports the dense graph (parity-checked), then writes, in this
    order: ``dense/<version>.onnx``, the table version into ``sparse/`` (a base the first
    time in this process, then a delta of the rows changed since the previous version), and
    ``deploy.yaml`` naming both. A server following the folder reads a version's dense
    file from its manifest entry, so it never pairs a dense model with another table.
    Then versions beyond the newest ``export.snapshot_keep`` chains are pruned.
    """

    def __init__(self, folder: str | Path, cfg: CtrConfig, width: int) -> None:
        self.folder = Path(folder)
        self.cfg = cfg
        self.writer = SnapshotWriter(
            self.folder / SPARSE_DIR, compact_every=cfg.export.snapshot_compact_every
        )
        manifest = self.writer.manifest()
        if manifest is not None and manifest["width"] != width:
            raise ConfigError(
                f"export.snapshots: {self.folder} holds tables of width {manifest['width']}; "
                f"this model's rows have width {width}. Publish into another folder"
            )
        self.has_base = False  # a base first: rows changed before this process are unknown

    def _free_name(self, version: str) -> str:
        """``version``, or ``version-2``, ``-3``... when the folder has it already (a run
        resumed from a checkpoint older than its last published version)."""
        manifest = self.writer.manifest()
        taken = {e["name"] for e in manifest["versions"]} if manifest else set()
        name, n = version, 1
        while name in taken:
            n += 1
            name = f"{version}-{n}"
        return name

    def publish(
        self,
        model: CtrModel,
        version: str,
        touched: torch.Tensor,
        changed: torch.Tensor | None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish ``model`` as ``version``: a base of the ``touched`` rows when no base was
        written in this process yet, else a delta of the ``changed`` rows (bool mask or
        row ids). Returns the version's manifest entry."""
        name = self._free_name(version)
        base = not self.has_base or changed is None
        if base:
            rows = touched
        elif changed.dtype == torch.bool:
            rows = changed.nonzero().squeeze(1)
        else:
            rows = changed
        keys, values = table_rows(model, rows)
        dense = f"{DENSE_DIR}/{name}.onnx"
        self.folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.folder))
        was_training = model.training
        try:
            with _quiet(True), torch.random.fork_rng(devices=[]):
                spec = export_spec(model, self.cfg, name)
                spec.export(stage / "x", opset=self.cfg.export.opset, atol=self.cfg.export.atol)
            built = stage / "x"
            (self.folder / DENSE_DIR).mkdir(exist_ok=True)
            os.replace(built / MODEL_FILE, self.folder / dense)  # 1. the dense model
            info = {**version_meta(model, name, dense), **(meta or {})}
            if base:  # 2. the table version, its manifest entry naming the dense model
                entry = self.writer.write_base(keys, values, name, info)
            else:
                entry = self.writer.write_delta(keys, values, name, info)
            self.has_base = True
            deploy = yaml.safe_load((built / DEPLOY_FILE).read_text(encoding="utf-8"))
            deploy["model_file"] = dense
            deploy["sparse"] = {"dir": SPARSE_DIR, "format": SNAPSHOT_FORMAT, "version": name}
            os.replace(built / SAMPLE_INPUTS_FILE, self.folder / SAMPLE_INPUTS_FILE)
            write_yaml(self.folder / DEPLOY_FILE, deploy)  # 3. last: what a new reader opens
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            model.train(was_training)
        self.prune(self.cfg.export.snapshot_keep)
        log.info(
            "published %s into %s: %s of %d rows", name, self.folder, entry["kind"], entry["rows"]
        )
        return entry

    def prune(self, keep: int) -> list[str]:
        """Remove the versions none of the newest ``keep`` reads: sparse layers and dense
        models; their names.

        The manifest is rewritten before any file goes, so a reader never finds a listed
        version missing; a server still on a removed version keeps its memory-mapped rows
        and loaded dense model (unlinked files stay readable) until its next watch.
        """
        manifest = self.writer.manifest()
        if manifest is None:
            return []
        dense = {e["name"]: (e.get("meta") or {}).get("dense") for e in manifest["versions"]}
        gone = self.writer.prune(keep)
        root = (self.folder / DENSE_DIR).resolve()
        for name in gone:
            path = dense.get(name)
            if not isinstance(path, str):
                continue
            file = (self.folder / path).resolve()
            if file.parent == root:  # only a dense model this folder's publisher wrote
                file.unlink(missing_ok=True)
        if gone:
            log.info("pruned %d old version(s) from %s", len(gone), self.folder)
        return gone
