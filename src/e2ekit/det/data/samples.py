"""Records -> raw sample dicts, the input of the det transforms.

Masks are decoded here, per sample and only with ``with_masks``: a box-only task never
pays for them, and a box-only sample is exactly what it was before masks existed (no
``masks`` key). Crowd annotations are left out of training samples, as before; their
masks go with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from e2ekit.core.imageio import read_image
from e2ekit.det.data.records import DetDataset, DetRecord

__all__ = ["RecordSamples", "load_sample"]


def load_sample(record: DetRecord, with_masks: bool = False) -> dict[str, Any]:
    """``{image uint8 (3,H,W), boxes (N,4), labels (N,), image_id, orig_size}`` plus, with
    ``with_masks`` and a record that has segmentations, ``masks`` uint8 (N,H,W)."""
    image = read_image(record.file)
    keep = ~np.asarray(record.iscrowd, dtype=bool)
    sample: dict[str, Any] = {
        "image": image,
        "boxes": torch.as_tensor(record.boxes[keep], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(record.labels[keep], dtype=torch.int64),
        "image_id": int(record.image_id),
        "orig_size": (int(image.shape[-2]), int(image.shape[-1])),
    }
    if with_masks and record.has_masks:
        masks = record.decode_masks(keep)
        h, w = sample["orig_size"]
        if masks.shape[-2:] != (h, w):  # the annotated size is not the file's: fit the file
            fitted = np.zeros((len(masks), h, w), np.uint8)
            mh, mw = min(h, masks.shape[-2]), min(w, masks.shape[-1])
            fitted[:, :mh, :mw] = masks[:, :mh, :mw]
            masks = fitted
        sample["masks"] = torch.from_numpy(masks)
    return sample


class RecordSamples(Dataset):
    """A map-style dataset of :func:`load_sample` over ``ds.records``; ``with_masks`` is
    what an instance-segmentation task sets."""

    def __init__(self, ds: DetDataset, with_masks: bool = False) -> None:
        self.records = ds.records
        self.with_masks = bool(with_masks)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return load_sample(self.records[index], self.with_masks)
