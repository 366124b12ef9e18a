"""Toy kit wiring: task factory, predict over CSV, and the ``/predict`` endpoint.

Feeding and decoding the model for both lives in ``toy.runner``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from e2ekit.core.errors import DataError
from e2ekit.core.fileio import atomic_open
from e2ekit.core.kit import Kit
from e2ekit.core.progress import progress
from e2ekit.core.serve import BadRequest, Endpoint
from e2ekit.toy.data import make_blobs, read_features
from e2ekit.toy.runner import FLOAT32_MAX, ToyRunner, first_unscored
from e2ekit.toy.task import ToyConfig, ToyTask

# A feature the float32 model can hold: NaN, infinities (JSON 1e400) and overflowing values
# are refused with 422 naming inputs.<row>.<column>, not run into NaN scores.
Feature = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    inputs: list[list[Feature]] = Field(..., description="rows of num_features finite floats")


class ToyKit(Kit[ToyConfig]):
    name = "toy"
    schema = ToyConfig
    description = "MLP on generated tabular data (exercises the core)"

    def make_task(self, cfg: ToyConfig) -> ToyTask:
        return ToyTask(cfg)

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        runner = ToyRunner(predictor)
        x = read_features(input_path, runner.num_features)
        out_dir.mkdir(parents=True, exist_ok=True)
        batch = 256
        with atomic_open(out_dir / "predictions.jsonl") as fh:
            for start in progress(range(0, len(x), batch), desc="predict", unit="batch"):
                records = runner.run(x[start : start + batch])
                bad = first_unscored(records)
                if bad is not None:
                    raise DataError(
                        f"{input_path}: data row {start + bad + 1} drives the model to "
                        "non-finite scores; are its features on the training data's scale?"
                    )
                for rec in records:
                    fh.write(json.dumps(rec) + "\n")
        return {"rows": len(x), "output": str(out_dir / "predictions.jsonl")}

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        runner = ToyRunner(predictor)
        width = runner.num_features

        def to_items(req: PredictRequest) -> list[list[float]]:
            if not req.inputs:
                raise BadRequest("'inputs' is empty: send at least one row", 422)
            for i, row in enumerate(req.inputs):
                if len(row) != width:
                    raise BadRequest(f"inputs[{i}] has {len(row)} values; expected {width}", 422)
            return req.inputs

        def run_batch(rows: list[list[float]]) -> list[dict[str, Any]]:
            return runner.run(rows)

        def to_response(req: PredictRequest, results: list[dict[str, Any]]) -> dict[str, Any]:
            bad = first_unscored(results)
            if bad is not None:
                raise BadRequest(
                    f"inputs.{bad}: the model's scores for this row are not finite; are its "
                    "features on the training data's scale?",
                    422,
                )
            return {"predictions": results}

        return [Endpoint("/predict", PredictRequest, to_items, run_batch, to_response)]

    def demo_input(self, cfg: ToyConfig, folder: Path) -> Path:
        d = cfg.data
        x, _ = make_blobs(32, d.num_features, d.num_classes, seed=99, noise=d.noise)
        path = folder / "toy_input.csv"
        path.write_text("\n".join(",".join(f"{v:.5f}" for v in row) for row in x) + "\n")
        return path

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        width = int(deploy["num_features"])
        return {"inputs": [[0.1 * (i - width / 2) for i in range(width)], [0.0] * width]}


KIT = ToyKit()
