"""DeepCTR-Torch 0.3.0 side of the CTR benchmark; runs inside the deepctr venv (_deepctr_env.py).

Trains DeepFM or DCN on a Criteo TSV (no header: label, I1..I13, C1..C26; empty = missing)
the way DeepCTR's ``examples/run_classification_criteo.py`` does, and prints ONE JSON line
on stdout::

    {"peer": "deepctr-torch 0.3.0", "model", "train_rows", "train_seconds",
     "train_samples_s", "preprocess_seconds", "val_auc", "val_logloss", "params", ...}

Preprocessing (timed separately as ``preprocess_seconds``, reading included): pandas
``read_csv``, ``fillna("-1")`` on C*, ``fillna(0)`` on I*, one ``LabelEncoder`` per C* fitted
on train + val values together (DeepCTR's example fits on its whole frame before splitting;
this way a val category unseen in train still maps to a valid embedding row). Dense features
are NOT min-max scaled as in the example: they get log(x + 1) for x >= 0, else 0 (missing = 0),
exactly what e2ekit's CriteoReader feeds our models, so both sides see the same inputs.

Timing: wall clock around ``model.fit(..., verbose=0)`` only; that includes DeepCTR's own
conversion of the input dict into one float tensor, as a DeepCTR user pays it. Val AUC and
logloss come from e2ekit's exact ``CtrMetrics`` (loaded from src/ by file path: numpy only),
so both sides are scored by the same code.

DeepCTR prints to stdout even with verbose=0 (the device, "Train on N samples"), and its
import starts a background PyPI version check that prints when offline: fd 1 is pointed at
stderr and the JSON goes to a private copy of the original stdout; ``requests.get`` is made to
fail at once so the check never touches the network while we time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402


def _offline(*args, **kwargs):
    raise requests.ConnectionError("benchmark worker: no network")


requests.get = _offline  # deepctr_torch's import-time version check
from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names  # noqa: E402
from deepctr_torch.models import DCN, DeepFM  # noqa: E402
from sklearn.preprocessing import LabelEncoder  # noqa: E402

PEER = "deepctr-torch 0.3.0"
DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
METRICS_PY = Path(__file__).resolve().parents[2] / "src" / "e2ekit" / "ctr" / "metrics.py"


def _ctr_metrics():
    spec = importlib.util.spec_from_file_location("_e2ekit_ctr_metrics", METRICS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CtrMetrics


def read_tsv(path: str) -> pd.DataFrame:
    dtypes = {"label": np.float32, **dict.fromkeys(DENSE, np.float64), **dict.fromkeys(SPARSE, str)}
    return pd.read_csv(path, sep="\t", header=None, names=["label", *DENSE, *SPARSE], dtype=dtypes)


def preprocess(train: pd.DataFrame, val: pd.DataFrame) -> dict[str, int]:
    """In place, as DeepCTR's Criteo example (dense transform: see the module docstring)."""
    vocab = {}
    for frame in (train, val):
        frame[SPARSE] = frame[SPARSE].fillna("-1")
        dense = frame[DENSE].fillna(0).to_numpy()
        # Same as e2ekit's CriteoReader (not the example's MinMaxScaler): matched inputs.
        frame[DENSE] = np.log1p(np.maximum(dense, 0)).astype(np.float32)
    for feat in SPARSE:
        enc = LabelEncoder().fit(pd.concat([train[feat], val[feat]]).to_numpy())
        train[feat] = enc.transform(train[feat].to_numpy())
        val[feat] = enc.transform(val[feat].to_numpy())
        vocab[feat] = len(enc.classes_)
    return vocab


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--model", choices=["deepfm", "dcn"], default="deepfm")
    ap.add_argument("--embed-dim", type=int, default=8)
    ap.add_argument("--mlp", default="256,128")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cross-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mlp = tuple(int(x) for x in args.mlp.split(",") if x)

    t0 = time.perf_counter()
    train, val = read_tsv(args.train), read_tsv(args.val)
    vocab = preprocess(train, val)
    columns = [SparseFeat(f, vocab[f] + 1, embedding_dim=args.embed_dim) for f in SPARSE]
    columns += [DenseFeat(f, 1) for f in DENSE]
    names = get_feature_names(columns)
    x_train = {n: train[n].to_numpy() for n in names}
    x_val = {n: val[n].to_numpy() for n in names}
    y_train = train["label"].to_numpy(copy=True)  # pandas 3 views are read-only: torch warns
    preprocess_seconds = time.perf_counter() - t0

    common = dict(dnn_hidden_units=mlp, task="binary", seed=args.seed, device=args.device)
    if args.model == "deepfm":
        model = DeepFM(columns, columns, **common)
    else:
        model = DCN(columns, columns, cross_num=args.cross_layers, **common)
    model.compile("adam", "binary_crossentropy")
    for group in model.optim.param_groups:
        group["lr"] = args.lr
    params = sum(p.numel() for p in model.parameters())

    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    pred = model.predict(x_val, batch_size=max(args.batch_size, 4096)).reshape(-1)
    predict_seconds = time.perf_counter() - t0
    scores = _ctr_metrics()().update(val["label"].to_numpy(), pred).compute()
    rows = len(train)
    result = {
        "peer": PEER,
        "model": args.model,
        "train_rows": rows,
        "val_rows": len(val),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 4),
        "train_samples_s": round(rows * args.epochs / train_seconds, 1),
        "preprocess_seconds": round(preprocess_seconds, 4),
        "predict_seconds": round(predict_seconds, 4),
        "val_auc": scores["auc"],
        "val_logloss": scores["logloss"],
        "val_calibration": scores["calibration"],
        "params": params,
        "torch": torch.__version__,
    }
    _OUT.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
