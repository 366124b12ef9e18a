"""A hook for the resume test: SIGKILL the process right after a checkpoint at a step."""

from __future__ import annotations

import os
import signal

from e2ekit.core.engine import Hook


class KillAtStep(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_checkpoint(self, trainer, path: str) -> None:  # type: ignore[no-untyped-def]
        if trainer.step == self.step and path.endswith("last.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
