"""Segmentation backbones exposing multi-scale features (torchvision-based)."""

from e2ekit.seg.backbones import mobilenet, resnet
from e2ekit.seg.backbones._pretrained import StagedBackbone, load_pretrained

__all__ = ["StagedBackbone", "load_pretrained", "mobilenet", "resnet"]
