"""PaddleDetection-style augmentations that keep an image and its boxes aligned.

A transform is a callable ``t(sample) -> sample`` on a dict::

    {"image": tv_tensors.Image uint8 (3,H,W),          # float32 after Normalize
     "boxes": tv_tensors.BoundingBoxes XYXY float32 (N,4), absolute pixels, canvas (H,W),
     "labels": int64 (N,), ...}

Other keys (``image_id``, ``orig_size``, ...) pass through unchanged. Per-box keys
(``labels`` and, when present, ``scores``, ``iscrowd``, ``difficult``) are indexed together
with ``boxes`` whenever boxes are dropped, so they never go out of step. ``boxes`` may be
absent (inference); plain tensors or numpy arrays are accepted and wrapped on the way in.
The input dict is never modified in place.

Transforms are registered in ``e2ekit.det.registry.TRANSFORMS`` under the names a
PaddleDetection user writes in ``sample_transforms`` (``RandomFlip``, ``Resize``,
``RandomResize``, ``RandomCrop``, ``RandomExpand``, ``RandomDistort``, ``Mixup``, ``Mosaic``,
``NormalizeImage``/``Normalize``, ``Pad``/``PadToSize``, ``SanitizeBoxes``; ``Decode`` and
``Permute`` are accepted as no-ops) and :func:`build_transforms` builds a list of
``{type: Name, **kwargs}`` or PaddleDetection's ``{Name: {kwargs}}`` entries. Batch
transforms (``BatchRandomResize``, ``PadBatch``) are in ``BATCH_TRANSFORMS``, run on the
list of samples of one batch inside :class:`DetCollate`, and end in :func:`pad_collate`.

One module per concern, as torchvision's v2 transforms: ``_base`` (the sample contract),
``_geometry``, ``_color``, ``_mix`` (Mosaic, Mixup), ``_container`` (Compose, building from
a config) and ``_batch``.

Conventions (PaddleDetection's, except where noted):

* sizes (``target_size``) are ``[height, width]`` or one int for a square;
* ``interp`` is an OpenCV code (0 NEAREST, 1 LINEAR, 2 CUBIC, 3 AREA, 4 LANCZOS4) or its
  name; AREA is antialiased bilinear and LANCZOS4 bicubic (torch has no tensor Lanczos);
* probabilities are the chance the op *is applied* (PaddleDetection's RandomExpand and
  RandomDistort use the opposite convention in places);
* pixel values (fills) are 0..255 units; everything that fills or blends pixels works on
  uint8 and must come before ``Normalize`` (:class:`Compose` checks the order).

Mixing several images (Mosaic, Mixup): :class:`TransformDataset` wraps any dataset of raw
sample dicts and supplies the extra samples (random indices drawn from torch's RNG).

All randomness comes from torch's global generator (the engine seeds it per worker and
sample), so a seeded pipeline is reproducible.
"""

from e2ekit.det.data.transforms._base import PER_BOX_KEYS, Decode, DetTransform, Permute
from e2ekit.det.data.transforms._batch import (
    BatchCompose,
    BatchRandomResize,
    DetCollate,
    PadBatch,
    build_batch_transforms,
    pad_collate,
)
from e2ekit.det.data.transforms._color import Normalize, RandomDistort
from e2ekit.det.data.transforms._container import Compose, TransformDataset, build_transforms
from e2ekit.det.data.transforms._geometry import (
    Pad,
    RandomCrop,
    RandomExpand,
    RandomFlip,
    RandomResize,
    Resize,
    SanitizeBoxes,
)
from e2ekit.det.data.transforms._mix import MixTransform, Mixup, Mosaic

__all__ = [
    "PER_BOX_KEYS",
    "BatchCompose",
    "BatchRandomResize",
    "Compose",
    "Decode",
    "DetCollate",
    "DetTransform",
    "MixTransform",
    "Mixup",
    "Mosaic",
    "Normalize",
    "Pad",
    "PadBatch",
    "Permute",
    "RandomCrop",
    "RandomDistort",
    "RandomExpand",
    "RandomFlip",
    "RandomResize",
    "Resize",
    "SanitizeBoxes",
    "TransformDataset",
    "build_batch_transforms",
    "build_transforms",
    "pad_collate",
]
