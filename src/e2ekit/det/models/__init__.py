"""Detection networks, one file per family; all follow :class:`~e2ekit.det.models.base.Detector`."""

import e2ekit.det.backbones  # noqa: F401  (networks build their backbones from BACKBONES)
from e2ekit.det.models import (
    blazeface,
    cascade_rcnn,
    faster_rcnn,
    mask_rcnn,
    ppyoloe,
    retinanet,
    ssd,
    yolov3,
)
from e2ekit.det.models.base import Detector

__all__ = [
    "Detector",
    "blazeface",
    "cascade_rcnn",
    "faster_rcnn",
    "mask_rcnn",
    "ppyoloe",
    "retinanet",
    "ssd",
    "yolov3",
]
