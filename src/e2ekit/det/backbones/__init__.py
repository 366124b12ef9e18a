"""Detection backbones: each returns its feature maps at ``strides`` with ``out_channels``."""

from e2ekit.det.backbones import blazenet, cspresnet, darknet, mobilenet

__all__ = ["blazenet", "cspresnet", "darknet", "mobilenet"]
