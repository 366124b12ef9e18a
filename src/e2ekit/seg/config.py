"""The seg kit's config schema (PaddleSeg's keys where they exist)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from e2ekit.core.schema import ExportConfig, RunConfig, Strict
from e2ekit.seg.test_time import TestConfig

BUILTIN_PREFIX = "builtin:"


class BuiltinData(Strict):
    """Parameters of the generated ``builtin:shapes`` dataset."""

    num_train: int = Field(400, ge=1)
    num_val: int = Field(80, ge=1)
    size: tuple[int, int] = (128, 128)
    seed: int = 0
    hue_overlap: float = Field(
        0.2, ge=0, description="how far class colours overlap; higher = shape must decide"
    )


class SegData(Strict):
    type: str = Field("file_list", description="file_list, voc, cityscapes, or a dotted path")
    root: str = Field("builtin:shapes", description="dataset folder, or builtin:shapes")
    train_list: str | None = Field("train.txt", description="file_list: 'image label' lines")
    val_list: str | None = "val.txt"
    test_list: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = Field(4, ge=1)
    class_names: list[str] | None = None
    ignore_index: int = 255
    binary_255_to_1: bool = False
    label_map: dict[int, int] | None = None
    validate_labels: bool = Field(True, description="scan every label before training")
    builtin: BuiltinData = BuiltinData()
    train_transforms: list[dict[str, Any]] = [
        {"type": "RandomHorizontalFlip"},
        {"type": "Normalize"},
    ]
    val_transforms: list[dict[str, Any]] = [{"type": "Normalize"}]

    @model_validator(mode="after")
    def _names(self) -> SegData:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"data.class_names has {len(self.class_names)} names for "
                f"data.num_classes={self.num_classes}"
            )
        return self


class SegLoss(Strict):
    """PaddleSeg's ``loss: {types: [...], coef: [...]}``; coef[i] weights output i (aux heads)."""

    types: list[dict[str, Any]] = [{"type": "cross_entropy"}]
    coef: list[float] | None = Field(
        None, description="one per network output; unset: 1.0 main head, 0.4 each aux head"
    )


class SegExport(ExportConfig):
    output: Literal["argmax", "probs"] = Field(
        "argmax", description="argmax: class-id map (B,H,W); probs: softmax (B,K,H,W)"
    )
    input_size: tuple[int, int] = Field((256, 256), description="example input (w, h)")


class SegConfig(RunConfig):
    model: dict[str, Any] = {"type": "pp_liteseg_tiny"}
    data: SegData = SegData()
    loss: SegLoss = SegLoss()
    test: TestConfig = TestConfig()
    export: SegExport = SegExport()
