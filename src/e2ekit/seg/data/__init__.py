"""Segmentation data: readers, label validation, synthetic data, augmentations, and
converters from polygon annotations (:func:`convert`)."""

from e2ekit.seg.data.convert import FORMATS, IGNORE, convert

__all__ = ["FORMATS", "IGNORE", "convert"]
