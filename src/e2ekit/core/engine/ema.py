"""Exponential moving average of weights, kept on the same device as the model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * w`` after each optimizer step; buffers are copied.

    With ``warmup_steps`` the decay ramps up, so early, poor weights fade quickly.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return min(self.decay, (1 + self.updates) / (self.warmup_steps + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        for name, ema_v in self.module.state_dict().items():
            v = src[name].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.to(ema_v.dtype), alpha=1 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
