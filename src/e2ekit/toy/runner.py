"""Deploy-side toy: feature rows in, class predictions out, through any Predictor.

Shared by ``predict`` and ``serve`` so both feed and decode the model the same way,
from ``deploy.yaml`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ToyRunner", "decode"]


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
