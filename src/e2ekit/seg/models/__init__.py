"""Segmentation networks, one file per family."""

import e2ekit.seg.backbones  # noqa: F401  (networks build their backbones from BACKBONES)
from e2ekit.seg.models import deeplabv3p, icnet, pp_liteseg, pspnet, unet

__all__ = ["deeplabv3p", "icnet", "pp_liteseg", "pspnet", "unet"]
