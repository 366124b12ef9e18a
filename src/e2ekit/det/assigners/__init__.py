"""Label assigners of anchor-free detectors: which anchor points learn which gt box."""

from e2ekit.det.assigners.atss import atss_assign
from e2ekit.det.assigners.task_aligned import alignment_metric, task_aligned_assign

__all__ = ["alignment_metric", "atss_assign", "task_aligned_assign"]
