"""Training engine: task interface, trainer loop, checkpoints, AMP, EMA, DDP."""

from e2ekit.core.engine.hooks import Hook
from e2ekit.core.engine.task import ExportSpec, Task
from e2ekit.core.engine.trainer import Trainer, eval_loader, run_evaluation, to_device

__all__ = ["ExportSpec", "Hook", "Task", "Trainer", "eval_loader", "run_evaluation", "to_device"]
