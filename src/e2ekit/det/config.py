"""The det kit's config schema (PaddleDetection's names where they exist)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from e2ekit.core.imageio import PIXEL_CEILING
from e2ekit.core.schema import ExportConfig, RunConfig, Strict

BUILTIN = "builtin:shapes"


class BuiltinShapes(Strict):
    """Parameters of the generated ``builtin:shapes`` detection set (COCO format)."""

    num_train: int = Field(500, ge=1)
    num_val: int = Field(100, ge=1)
    size: int = Field(160, ge=32)
    seed: int = 0
    max_objects: int = Field(6, ge=1)


class DetData(Strict):
    format: Literal["coco", "voc"] = "coco"
    # COCO
    train_ann: str | None = Field(BUILTIN, description="COCO json, or builtin:shapes")
    train_images: str | None = None
    val_ann: str | None = BUILTIN
    val_images: str | None = None
    # VOC (PaddleDetection layout)
    root: str | None = Field(None, description="voc: dataset folder")
    train_list: str | None = Field(None, description="voc: 'image xml' lines, relative to root")
    val_list: str | None = None
    label_list: str | None = Field(None, description="voc: one class name per line")
    num_classes: int | None = Field(None, ge=1, description="default: from the annotations")
    drop_invalid: bool = Field(False, description="drop invalid boxes/images instead of failing")
    builtin: BuiltinShapes = BuiltinShapes()
    train_transforms: list[dict[str, Any]] = [
        {"type": "RandomFlip"},
        {"type": "Resize", "target_size": 160, "keep_ratio": False},
        {"type": "Normalize"},
    ]
    val_transforms: list[dict[str, Any]] = [
        {"type": "Resize", "target_size": 160, "keep_ratio": False},
        {"type": "Normalize"},
    ]
    batch_transforms: list[dict[str, Any]] = Field(
        [],
        description="per-batch transforms, e.g. [{type: BatchRandomResize, target_size: "
        "[128, 160, 192]}] for YOLOv3 multi-scale training (train split only)",
    )
    pad_stride: int = Field(32, ge=1, description="batches are padded to a multiple of this")
    aspect_ratio_grouping: bool = Field(
        False,
        description="batch train images of similar aspect ratio (8 bins of width/height, "
        "from 1:2 to 2:1, torchvision's grouping): with ratio-keeping resizes a batch pads "
        "less; the epoch order stays random and resumable",
    )

    @model_validator(mode="after")
    def _voc_keys(self) -> DetData:
        if self.format == "voc" and (not self.root or not self.label_list):
            raise ValueError("format voc needs data.root, data.train_list and data.label_list")
        return self


class DetEval(Strict):
    """How the val set is scored, in training (``best.pt``) and by ``det eval``.

    COCO AP is always reported; VOC mAP is added when it is the metric, because VOC data is
    compared against PaddleDetection's VOC numbers, not COCO's.
    """

    metric: Literal["auto", "coco", "voc"] = Field(
        "auto",
        description="auto: voc when data.format is voc, else coco; voc adds voc_mAP and "
        "voc_per_class_ap and makes voc_mAP the default train.metric",
    )
    voc_metric: Literal["11point", "area"] = Field(
        "11point", description="VOC AP: 11point (VOC2007, PaddleDetection's default) or area"
    )
    voc_iou: float = Field(0.5, gt=0, lt=1, description="VOC: IoU above which a box is a hit")


class DetExport(ExportConfig):
    atol: float = Field(1e-3, gt=0, description="max abs diff allowed vs PyTorch (boxes, scores)")
    input_size: int = Field(160, ge=32, description="export/example input (square, pixels)")
    nms: bool = Field(True, description="NMS inside the graph; false: raw boxes and scores")
    # Conv nets: calibrated int8 convolutions (dynamic ConvInteger is slower than fp32).
    quantize_mode: Literal["dynamic", "static"] = "static"


# predict's default decode limit: 64 MP (8192x8192) is 192 MB as RGB; larger is refused.
MAX_PREDICT_PIXELS = 8192 * 8192


class PredictConfig(Strict):
    draw_threshold: float = Field(0.5, ge=0, le=1)
    max_image_pixels: int = Field(
        MAX_PREDICT_PIXELS,
        ge=1,
        le=PIXEL_CEILING,
        description="largest image (w*h) predict decodes; a larger file is refused from its "
        "header before any work (the model sees every image resized to export.input_size)",
    )


class DetConfig(RunConfig):
    model: dict[str, Any] = {"type": "yolov3_tiny"}
    data: DetData = DetData()  # type: ignore[assignment]
    export: DetExport = DetExport()  # type: ignore[assignment]
    predict: PredictConfig = PredictConfig()
    eval: DetEval = DetEval()

    @property
    def eval_metric(self) -> Literal["coco", "voc"]:
        """``eval.metric`` with ``auto`` resolved from ``data.format``."""
        if self.eval.metric == "auto":
            return "voc" if self.data.format == "voc" else "coco"
        return self.eval.metric
