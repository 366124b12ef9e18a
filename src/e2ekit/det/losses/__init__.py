"""Detection losses shared by det's dense heads (box IoU losses come from torchvision.ops)."""

from e2ekit.det.losses.distribution import distribution_focal_loss, integral
from e2ekit.det.losses.varifocal import varifocal_loss

__all__ = ["distribution_focal_loss", "integral", "varifocal_loss"]
