"""Score raw Criteo rows with an export (sparse store + dense ONNX) or a checkpoint.

The runner does what a CTR server does: parse and hash the row exactly like training,
look the 26 slot rows up in the exported key -> vector store (a sorted-key binary search;
unseen keys get the default zero vector), and run the dense graph on the predictor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from e2ekit.core.errors import DataError
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE, hash_strings
from e2ekit.ctr.export import SPARSE_FORMAT, SPARSE_VERSION


class SparseStore:
    """The exported table: ``lookup(ids (B, 26)) -> (B, 26, width)`` float32."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise DataError(f"{folder}: no manifest.json; not a ctr export's sparse folder")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != SPARSE_FORMAT:
            raise DataError(
                f"{path}: format {self.manifest.get('format')!r} is not {SPARSE_FORMAT}"
            )
        if int(self.manifest.get("format_version", 0)) > SPARSE_VERSION:
            raise DataError(
                f"{path}: format_version {self.manifest['format_version']} is newer than "
                f"this e2ekit reads ({SPARSE_VERSION})"
            )
        self.keys = np.load(folder / self.manifest["keys_file"])
        self.values = np.load(folder / self.manifest["values_file"])
        self.hash_size = int(self.manifest["hash_size"])
        self.width = int(self.manifest["width"])
        # one extra zero row: where every missing key points
        self._rows = np.concatenate([self.values, np.zeros((1, self.width), np.float32)])
        self.version = self.manifest.get("model_version")

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        keys = ids.astype(np.int64) + np.arange(ids.shape[1], dtype=np.int64) * self.hash_size
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1) if len(self.keys) else np.zeros_like(pos)
        hit = (self.keys[pos] == keys) if len(self.keys) else np.zeros(keys.shape, bool)
        return self._rows[np.where(hit, pos, len(self.values))]


class TableLookup:
    """Lookup straight from a live model's table (``predict --weights``)."""

    def __init__(self, model: Any) -> None:
        self.table = model.tables.embedding.weight.detach().cpu().numpy()
        self.hash_size = int(model.hash_size)
        self.width = int(model.width)
        self.version = "checkpoint"

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        rows = ids.astype(np.int64) + np.arange(ids.shape[1], dtype=np.int64) * self.hash_size
        return self.table[rows]


def parse_lines(lines: list[str], hash_size: int) -> dict[str, np.ndarray]:
    """Criteo rows as text (39 fields without a label, or 40 with one) -> model inputs.

    Raises ValueError naming the first bad row (the server turns it into HTTP 422).
    """
    n = len(lines)
    dense = np.zeros((n, N_DENSE), np.float32)
    cats: list[str] = []
    labels = np.full(n, -1, np.int8)
    for i, line in enumerate(lines):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) == N_DENSE + N_SPARSE + 1:
            if fields[0] not in ("0", "1"):
                raise ValueError(f"row {i}: label {fields[0]!r} is not 0 or 1")
            labels[i] = int(fields[0])
            fields = fields[1:]
        elif len(fields) != N_DENSE + N_SPARSE:
            raise ValueError(
                f"row {i}: {len(fields)} tab-separated fields; expected 39 (I1..I13, C1..C26) "
                "or 40 with the label first"
            )
        for j, value in enumerate(fields[:N_DENSE]):
            if value:
                dense[i, j] = _dense_value(value, f"row {i}: I{j + 1}")
        cats.extend(fields[N_DENSE:])
    slots = np.tile(np.arange(N_SPARSE), n)
    sparse = hash_strings(pa.array(cats, pa.string()), slots, hash_size).reshape(n, N_SPARSE)
    return {"dense": dense, "sparse": sparse, "label": labels}


def _dense_value(text: str, where: str) -> float:
    """One dense field as training sees it: log(x + 1) for x >= 0, else 0.

    Raises ValueError (HTTP 422) naming ``where`` for text that is not an integer, or one
    too large for a float (a 401-digit value): it would reach the model as infinity.
    """
    shown = repr(text) if len(text) <= 24 else f"{text[:12]!r}... ({len(text)} characters)"
    try:
        x = float(int(text))
    except ValueError:
        raise ValueError(f"{where} {shown} is not an integer") from None
    except OverflowError:
        raise ValueError(f"{where} {shown} is out of range (at most about 1.8e308)") from None
    return float(np.log1p(x)) if x >= 0 else 0.0


class CtrRunner:
    """``predictor`` (export or checkpoint) + its table -> click probabilities."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        if deploy.get("kit") != "ctr":
            raise DataError(f"this is a {deploy.get('kit')!r} model, not a ctr export")
        module = getattr(predictor, "module", None)
        if module is not None and hasattr(module, "model"):
            self.store: Any = TableLookup(module.model)
        else:
            self.store = SparseStore(Path(predictor.export_dir) / deploy["sparse"]["dir"])
        self.hash_size = int(deploy["hash_size"])
        self.version = deploy.get("model_version")

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        emb = self.store.lookup(sparse)
        out = self.predictor.run({"dense": dense.astype(np.float32), "emb": emb})
        return np.asarray(out["prob"], dtype=np.float32).reshape(-1)

    def score_lines(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = parse_lines(lines, self.hash_size)
        return self.score(feats["dense"], feats["sparse"]), feats["label"]
