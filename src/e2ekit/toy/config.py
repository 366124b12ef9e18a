"""The toy kit's config schema: generated or CSV tabular data for a small classifier."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from e2ekit.core.schema import RunConfig, Strict

__all__ = ["ToyConfig", "ToyData"]


class ToyData(Strict):
    train: str | None = Field(None, description="CSV label,f1..fD; generated data when unset")
    val: str | None = None
    num_features: int = Field(16, ge=1)
    num_classes: int = Field(3, ge=2)
    num_train: int = Field(2048, ge=1)
    num_val: int = Field(512, ge=1)
    noise: float = Field(0.3, ge=0)
    seed: int = 0
    class_names: list[str] | None = None


class ToyConfig(RunConfig):
    unsupported = {
        "train.channels_last": "the toy MLP has no convolutions",
        "export.calibration_samples": "static int8 calibrates the toy MLP on the export's "
        "sample inputs; the toy task has no calibration data",
        "serve.max_image_pixels": "toy requests carry no images",
    }

    model: dict[str, Any] = {"type": "toy_mlp"}
    data: ToyData = ToyData()
