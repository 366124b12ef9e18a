"""Segmentation data: readers, label validation, synthetic data, augmentations."""
