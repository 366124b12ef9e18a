"""Detection data: COCO/VOC readers, box validation, converters and a synthetic set.

Every reader returns a :class:`DetDataset` (records of xyxy pixel boxes and
contiguous labels, plus raw COCO segmentations where the data has them), which
:func:`validate` checks and cleans before training; :func:`load_sample` turns a record
into a sample, decoding instance masks only when asked (``with_masks``).
"""

from e2ekit.det.data.coco import read_coco
from e2ekit.det.data.convert import labelme_to_coco, via_to_coco, voc_to_coco
from e2ekit.det.data.masks import decode_masks, decode_segmentation
from e2ekit.det.data.records import DetDataset, DetRecord
from e2ekit.det.data.samples import RecordSamples, load_sample
from e2ekit.det.data.synthetic import (
    SHAPES,
    builtin_class_names,
    builtin_coco,
    builtin_paths,
    make_synthetic_coco,
)
from e2ekit.det.data.validate import ValidationReport, validate
from e2ekit.det.data.voc import read_label_list, read_voc

__all__ = [
    "SHAPES",
    "DetDataset",
    "DetRecord",
    "RecordSamples",
    "ValidationReport",
    "builtin_class_names",
    "builtin_coco",
    "builtin_paths",
    "decode_masks",
    "decode_segmentation",
    "labelme_to_coco",
    "load_sample",
    "make_synthetic_coco",
    "read_coco",
    "read_label_list",
    "read_voc",
    "validate",
    "via_to_coco",
    "voc_to_coco",
]
