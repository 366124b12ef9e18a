"""Device choice, seeding and the determinism switch."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from e2ekit.core.engine.dist import local_rank
from e2ekit.core.errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` takes this rank's CUDA device when there is one, else the CPU; ``cuda`` on a
    machine without one is a one-line error naming ``key`` (never a silent CPU run)."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"{key}={name}: use auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}={name}: this machine has no usable CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use {key}=cpu"
        )
    if name.startswith("cuda:"):
        return torch.device(name)
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
