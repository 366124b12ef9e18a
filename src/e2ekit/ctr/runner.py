"""Score raw CTR rows with an export (table store + dense ONNX) or a checkpoint.

The runner does what a CTR server does: parse and hash the row exactly like training (the
export's feature schema: Criteo's columns or the user's), look the slot rows up in the
export's key -> vector store (unseen keys get zeros), pool multi-valued slots into fields,
and run the dense graph on the predictor. A snapshot export's rows come from a KV store
(``infer.kv``: memory-mapped files, or Redis); a server can follow the folder
(``serve.watch_s``): when a newer version is published there, its table and its dense
model are loaded side by side and swapped in together.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from e2ekit.core.errors import DataError, E2EError
from e2ekit.core.logs import log
from e2ekit.ctr.config import KV_EMBEDDED
from e2ekit.ctr.data.criteo import N_DENSE, N_SPARSE, CriteoReader, hash_strings
from e2ekit.ctr.export import SPARSE_FORMAT, SPARSE_VERSION
from e2ekit.ctr.features import FeatureSchema, add_crosses
from e2ekit.ctr.kv import open_store, read_manifest
from e2ekit.ctr.kv.snapshots import MANIFEST, SNAPSHOT_FORMAT
from e2ekit.ctr.models.layout import FeatureLayout


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
        self.layout: FeatureLayout = model.layout
        self.width = int(model.width)
        self.version = "checkpoint"

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        return self.table[self.layout.rows(ids)]


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


class SnapshotLookup:
    """A KV store seen as the runner's table: ``lookup(ids (B, S))`` adds each slot's key
    offset (``layout.offsets``) and asks the store."""

    def __init__(self, store: Any, layout: FeatureLayout) -> None:
        self.store = store
        self.layout = layout
        self.version = store.version

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        return self.store.lookup(self.layout.rows(ids))

    def close(self) -> None:
        self.store.close()


def redis_namespace(folder: Path) -> str:
    """One Redis namespace per snapshot folder: servers of the same folder (the same path on
    a shared volume) share its layers and version pointer; another model's folder, on the
    same Redis, can neither move that pointer nor prune those layers."""
    digest = hashlib.blake2b(str(Path(folder).resolve()).encode(), digest_size=6).hexdigest()
    return f"e2ekit-ctr-{digest}"


def open_snapshot(
    kv: str, folder: Path, version: str | None, layout: FeatureLayout
) -> SnapshotLookup:
    """``version`` of the snapshot folder in the ``kv`` store. A Redis store is pinned to
    the version it loads: the table must not move under the dense model it pairs with."""
    options: dict[str, Any] = (
        {}
        if kv == KV_EMBEDDED
        else {
            "refresh_s": math.inf,
            "namespace": redis_namespace(folder),
        }
    )
    store = open_store(kv, snapshot_folder=folder, version=version, **options)
    return SnapshotLookup(store, layout)


class Live:
    """One table version and the dense model trained with it: what a batch is scored on.

    The runner swaps a whole ``Live`` in with one assignment; ``users`` counts the batches
    still scoring on a replaced one, whose store closes once the last of them is done."""

    def __init__(self, version: str | None, table: Any, run: Callable[..., Any]) -> None:
        self.version = version
        self.table = table
        self.run = run
        self.users = 0
        self.retired = False

    def close(self) -> None:
        close = getattr(self.table, "close", None)
        if close is not None:
            close()


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


class CtrRunner:
    """``predictor`` (export or checkpoint) + its table -> click probabilities.

    ``kv`` is the store of a snapshot export's rows (``infer.kv``); ``watch_s > 0`` follows
    the snapshot folder: every ``watch_s`` seconds its manifest is checked, and a newer
    version is swapped in (table and dense model at once) after a trial batch passed on it.
    A version that fails to load is logged and the current one kept.
    """

    def __init__(self, predictor: Any, kv: str = KV_EMBEDDED, watch_s: float = 0.0) -> None:
        self.predictor = predictor
        deploy = predictor.deploy
        if deploy.get("kit") != "ctr":
            raise DataError(f"this is a {deploy.get('kit')!r} model, not a ctr export")
        if deploy.get("layout"):
            self.layout = FeatureLayout.from_dict(deploy["layout"])
        else:  # exports made before feature schemas: Criteo with one hash size
            self.layout = FeatureLayout.criteo(int(deploy["hash_size"]))
        self.schema = FeatureSchema.model_validate(deploy.get("schema") or {})
        self.kv = kv
        self.snapshots: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        module = getattr(predictor, "module", None)
        if module is not None and hasattr(module, "model"):
            if kv != KV_EMBEDDED:
                log.warning(
                    "infer.kv=%s: a checkpoint (--weights) looks rows up in its own table; "
                    "the store applies to exports (--model)",
                    kv,
                )
            table: Any = TableLookup(module.model)
            version = deploy.get("model_version")
        else:
            table, version = self._open_export(Path(predictor.export_dir), deploy)
        self._live = Live(version, table, predictor.run)
        self._seen = _file_identity(self.snapshots / MANIFEST) if self.snapshots else None
        if watch_s > 0 and self.snapshots is not None:
            self._start_watch(watch_s)

    def _open_export(self, export_dir: Path, deploy: dict[str, Any]) -> tuple[Any, str | None]:
        from e2ekit.core.infer import export_file

        sparse = deploy.get("sparse")
        if not isinstance(sparse, dict):
            raise DataError(f"{export_dir / 'deploy.yaml'}: no 'sparse' section (the table)")
        folder = export_file(export_dir, sparse.get("dir"), "sparse.dir")
        fmt = sparse.get("format")
        if fmt == SPARSE_FORMAT:
            if self.kv != KV_EMBEDDED:
                raise E2EError(
                    f"infer.kv={self.kv}: {folder} is an export made before snapshots "
                    f"({SPARSE_FORMAT}); re-export it to serve its rows from Redis"
                )
            return SparseStore(folder), deploy.get("model_version")
        if fmt != SNAPSHOT_FORMAT:
            raise DataError(
                f"{export_dir / 'deploy.yaml'}: sparse.format {fmt!r} is not "
                f"{SNAPSHOT_FORMAT} or {SPARSE_FORMAT}"
            )
        version = sparse.get("version")
        table = open_snapshot(self.kv, folder, version, self.layout)
        self.snapshots = folder
        return table, table.version

    # -- scoring ------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The model version scoring now (the table's and the dense model's)."""
        return self._live.version

    def score_versioned(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, Any]:
        """Probabilities and the version that gave them (one table/model pair throughout)."""
        with self._lock:
            live = self._live  # read once: the batch stays on this pair
            live.users += 1
        try:
            emb = self.pool(live.table.lookup(sparse), sparse)
            out = live.run({"dense": dense.astype(np.float32), "emb": emb})
            probs = np.asarray(out["prob"], dtype=np.float32).reshape(-1)
        finally:
            with self._lock:
                live.users -= 1
                done = live.retired and live.users == 0
            if done:
                live.close()
        return probs, live.version

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return self.score_versioned(dense, sparse)[0]

    def pool(self, emb: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Slot rows ``(B, S, W)`` -> field rows ``(B, F, W)`` (multi-valued fields pooled)."""
        if not self.layout.pooled:
            return emb
        import torch

        pooled = self.layout.pool(torch.from_numpy(emb), torch.from_numpy(sparse))
        return pooled.numpy()

    def parse(self, lines: list[str]) -> dict[str, np.ndarray]:
        """Raw rows in the export's schema -> model inputs (ValueError names a bad row)."""
        if self.schema.custom:
            from e2ekit.ctr.data.delimited import parse_rows

            feats = parse_rows(lines, self.schema, self.layout)
        else:
            uniform = self.layout.uniform_hash
            assert uniform is not None, "Criteo columns share one hash size"
            feats = parse_lines(lines, uniform)
        feats["sparse"] = add_crosses(feats["sparse"], self.schema, self.layout)
        return feats

    def open_reader(self, path: str | Path, batch_size: int = 8192) -> CriteoReader:
        """A reader of files in the export's schema (predict), crosses included."""
        if self.schema.custom:
            from e2ekit.ctr.data.delimited import DelimitedReader

            reader: CriteoReader = DelimitedReader(
                str(path), schema=self.schema, layout=self.layout, batch_size=batch_size
            )
        else:
            from e2ekit.ctr.data.formats import open_reader

            uniform = self.layout.uniform_hash
            reader = open_reader(str(path), format="auto", hash_size=uniform, batch_size=batch_size)
        if self.schema.crosses:
            reader.add_slots = lambda sparse: add_crosses(sparse, self.schema, self.layout)
        return reader

    def score_lines(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = self.parse(lines)
        return self.score(feats["dense"], feats["sparse"]), feats["label"]

    # -- following a snapshot folder -------------------------------------------------------------
    def _start_watch(self, interval: float) -> None:
        backend = getattr(self.predictor, "backend_name", None)
        precision = getattr(self.predictor, "precision", "fp32")
        if backend != "onnxruntime" or precision != "fp32":
            log.info(
                "serve.watch_s: new versions carry an fp32 ONNX model; serving %s %s, the "
                "version loaded now stays",
                backend,
                precision,
            )
            return
        ref = weakref.ref(self)
        stop = self._stop
        self._watcher = threading.Thread(
            target=_watch, args=(ref, stop, interval), name="e2ekit-ctr-watch", daemon=True
        )
        self._watcher.start()

    def refresh(self) -> bool:
        """Swap in the snapshot folder's newest version if it is not the current one; True
        when it did. A version that fails to load is logged; the current one stays."""
        if self.snapshots is None:
            return False
        ident = _file_identity(self.snapshots / MANIFEST)
        if ident is None or ident == self._seen:
            return False
        self._seen = ident  # a failed version is tried again only once the manifest changes
        try:
            versions = read_manifest(self.snapshots)["versions"]
            if not versions or versions[-1]["name"] == self._live.version:
                return False
            live = self._load(versions[-1])
        except Exception as exc:  # any failure keeps the version being served
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning(
                "new ctr version in %s not loaded (%s); still serving %s",
                self.snapshots,
                first,
                self._live.version,
            )
            return False
        with self._lock:
            old, self._live = self._live, live  # the one assignment a batch can observe
            old.retired = True
            idle = old.users == 0
        previous = _store_layers(old.table)
        if idle:
            old.close()
        log.info("now serving ctr version %s (was %s)", live.version, old.version)
        self._prune_shared(live, previous)
        return True

    def _prune_shared(self, live: Live, previous: list[str]) -> None:
        """Drop old layers from a shared store (Redis: ``RedisStore.prune`` says which are
        safe), keeping ``previous``, the chain batches may still be scoring on. The
        embedded store has nothing to drop: the publisher prunes the files. A failure is a
        warning: serving goes on."""
        prune = getattr(getattr(live.table, "store", None), "prune", None)
        if prune is None:
            return
        try:
            prune(keep=previous)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning("old ctr layers not dropped from %s (%s)", self.kv, first)

    def _load(self, entry: dict[str, Any]) -> Live:
        """The version ``entry`` names, with its dense model, checked on a trial batch."""
        from e2ekit.core.infer import OnnxRuntimeBackend, export_file

        predictor = self.predictor
        export_dir = Path(predictor.export_dir)
        name = entry["name"]
        dense = (entry.get("meta") or {}).get("dense")
        key = f"{MANIFEST} version {name!r} meta.dense"
        export_file(export_dir, dense, key)  # inside the export folder, or refused
        deploy = {**predictor.deploy, "model_file": dense, "model_version": name}
        backend = OnnxRuntimeBackend(
            export_dir,
            deploy,
            num_threads=predictor.num_threads,
            precision="fp32",
            device=predictor.device,
        )
        assert self.snapshots is not None
        table = open_snapshot(self.kv, self.snapshots, name, self.layout)
        try:
            live = Live(name, table, lambda feeds: backend.run(_float32(feeds)))
            ids = np.zeros((1, self.layout.num_slots), np.int64)
            trial = live.run(
                {
                    "dense": np.zeros((1, self.layout.num_dense), np.float32),
                    "emb": self.pool(table.lookup(ids), ids),
                }
            )
            prob = np.asarray(trial["prob"])
            if prob.shape != (1,) or not np.all(np.isfinite(prob)):
                raise DataError(f"{dense}: a trial row gave {prob.tolist()}, not one probability")
        except BaseException:
            table.close()
            raise
        return live

    def close(self) -> None:
        """Stop following the folder and close the current store."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        with self._lock:
            live = self._live
            live.retired = True
            idle = live.users == 0
        if idle:
            live.close()


def _store_layers(table: Any) -> list[str]:
    """The layer names a table's shared store reads (empty for the embedded store)."""
    layers = getattr(getattr(table, "store", None), "layers", None)
    return list(layers) if isinstance(layers, list) else []


def _float32(feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}


def _watch(ref: weakref.ref[CtrRunner], stop: threading.Event, interval: float) -> None:
    """Poll the runner's snapshot folder until it is closed or garbage-collected."""
    while not stop.wait(interval):
        runner = ref()
        if runner is None:
            return
        try:
            runner.refresh()
        except Exception:  # never let the watch die: the server keeps its version
            log.exception("ctr version watch")
        del runner
