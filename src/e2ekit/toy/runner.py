"""Deploy-side toy: feature rows in, class predictions out, through any Predictor.

Shared by ``predict`` and ``serve`` so both feed and decode the model the same way,
from ``deploy.yaml`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FLOAT32_MAX", "ToyRunner", "decode", "first_unscored"]

# The model computes in float32: a larger feature is infinite to it.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def decode(probs: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Probabilities -> one ``{label, label_id, scores}`` record per row."""
    ids = probs.argmax(axis=-1)
    return [
        {
            "label": class_names[int(i)],
            "label_id": int(i),
            "scores": [round(float(p), 6) for p in row],
        }
        for i, row in zip(ids, probs, strict=True)
    ]


class ToyRunner:
    """Rows of ``num_features`` floats -> one decoded prediction per row."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.num_features = int(predictor.deploy["num_features"])
        self.class_names = list(predictor.deploy["class_names"])

    def run(self, rows: np.ndarray | list[list[float]]) -> list[dict[str, Any]]:
        probs = self.predictor.run({"features": np.asarray(rows, np.float32)})["probs"]
        return decode(probs, self.class_names)


def first_unscored(predictions: list[dict[str, Any]]) -> int | None:
    """Index of the first prediction whose scores are not finite numbers, or None.

    Finite but huge features (3e38) can overflow inside the model; its NaN scores would
    otherwise be written as a confident first class, or fail the JSON response."""
    for i, rec in enumerate(predictions):
        if not np.isfinite(rec["scores"]).all():
            return i
    return None
