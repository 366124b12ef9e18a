"""Peer side of the ctr quality benchmark, run in the deepctr venv: DeepCTR-Torch 0.3 DeepFM
(emb 8, MLP 256-128, Adam 1e-3, batch 1024), with the preprocessing of
``benchmarks/ctr/_deepctr_worker.py`` (pandas, LabelEncoder, log1p dense). Writes the test
probabilities (one per line, file order); last stdout line: JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ctr"))
# The worker module points fd 1 at stderr on import (DeepCTR prints); _OUT is the real stdout.
import _deepctr_worker as worker
import numpy as np
import torch
from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
from deepctr_torch.models import DeepFM


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    seed = int(spec.get("seed", 1024))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train, test = worker.read_tsv(spec["train"]), worker.read_tsv(spec["test"])
    vocab = worker.preprocess(train, test)
    columns = [SparseFeat(f, vocab[f] + 1, embedding_dim=8) for f in worker.SPARSE]
    columns += [DenseFeat(f, 1) for f in worker.DENSE]
    names = get_feature_names(columns)
    x_train = {n: train[n].to_numpy() for n in names}
    x_test = {n: test[n].to_numpy() for n in names}
    y_train = train["label"].to_numpy(copy=True)
    preprocess_wall = time.perf_counter() - t0

    model = DeepFM(
        columns, columns, dnn_hidden_units=(256, 128), task="binary", seed=seed, device="cpu"
    )
    model.compile("adam", "binary_crossentropy")
    for group in model.optim.param_groups:
        group["lr"] = 1e-3
    epochs, batch = spec["epochs"], 1024
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    train_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(x_test, batch_size=4096).reshape(-1)
    predict_wall = time.perf_counter() - t0
    np.savetxt(spec["pred_file"], pred, fmt="%.6f")
    result = {
        "command": "DeepFM(emb 8, dnn_hidden_units=(256, 128)), compile('adam', "
        f"'binary_crossentropy'), lr 1e-3, fit(batch_size={batch}, epochs={epochs})",
        "peer": worker.PEER,
        "epochs": epochs,
        "preprocess_wall_s": round(preprocess_wall, 1),
        "train_wall_s": round(train_wall, 1),
        "train_samples_per_s": round(len(train) * epochs / train_wall, 1),
        "predict_wall_s": round(predict_wall, 1),
    }
    worker._OUT.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
