"""Device choice, seeding and the determinism switch."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from e2ekit.core.engine.dist import local_rank


def resolve_device(name: str) -> torch.device:
    """``auto`` takes this rank's CUDA device when there is one, else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA device is visible")
    return torch.device("cuda", local_rank())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_determinism(enabled: bool) -> None:
    """Bit-reproducible kernels when asked (slower on GPU); warn-only for ops without one."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = torch.cuda.is_available()
