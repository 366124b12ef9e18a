"""Segmentation kit: PaddleSeg-style data, augmentations, models, losses and metrics."""
