"""Optimizers and LR schedules (warmup + constant/linear/cosine/poly) from config."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from e2ekit.core.errors import ConfigError, did_you_mean
from e2ekit.core.registry import locate
from e2ekit.core.schema import OptimConfig, SchedConfig

OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(
    model: nn.Module, cfg: OptimConfig, params: list[nn.Parameter] | None = None
) -> list[dict]:
    """Biases and norm weights (1-D params) get no weight decay, as BERT/timm do.

    ``params`` restricts the groups to those parameters (e.g. all but a sparse table)."""
    chosen = list(model.parameters()) if params is None else params
    if not cfg.no_decay_norm_bias or cfg.weight_decay == 0:
        return [{"params": [p for p in chosen if p.requires_grad]}]
    decay, no_decay = [], []
    for p in chosen:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def layer_decay_groups(
    model: nn.Module,
    cfg: OptimConfig,
    layer_of: Callable[[str], int],
    num_layers: int,
    decay: float,
    head_lr: float | None = None,
) -> list[dict]:
    """Layer-wise LR decay (ELECTRA/ERNIE/BEiT): layer ``i`` of ``num_layers`` trains at
    ``lr * decay ** (num_layers - i)``; ``layer_of`` maps a parameter name to its layer,
    0 for embeddings and ``num_layers`` (or more) for the task head.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = min(layer_of(name), num_layers)
        no_wd = cfg.no_decay_norm_bias and p.ndim <= 1
        key = (layer, no_wd)
        if key not in groups:
            lr = cfg.lr * decay ** (num_layers - layer)
            if layer == num_layers and head_lr is not None:
                lr = head_lr
            groups[key] = {
                "params": [],
                "lr": lr,
                "weight_decay": 0.0 if no_wd else cfg.weight_decay,
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """``groups`` lets a kit pass its own parameter groups (e.g. layer-wise LR decay)."""
    groups = groups if groups is not None else param_groups(model, cfg)
    name = cfg.type.lower()
    if name == "adamw":
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if ":" in cfg.type:
        return locate(cfg.type)(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(
        f"unknown optim.type '{cfg.type}'{did_you_mean(name, OPTIMIZERS)}; "
        f"choose one of {', '.join(OPTIMIZERS)} or a dotted path 'pkg.mod:Optimizer'"
    )


def lr_factor(cfg: SchedConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``step`` (0-based)."""
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total_steps)
    total = max(total_steps, 1)
    floor = cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            start = cfg.warmup_start_factor
            return start + (1.0 - start) * (step + 1) / warmup
        if cfg.type == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.type == "linear":
            decayed = 1.0 - progress
        elif cfg.type == "cosine":
            decayed = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # poly
            decayed = (1.0 - progress) ** cfg.power
        return floor + (1.0 - floor) * decayed

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))


def retime_scheduler(
    scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: SchedConfig, total_steps: int
) -> None:
    """Make ``scheduler`` end at ``total_steps`` from its current step on (a time-budgeted
    run learns its length while training): warm-up (``warmup_ratio`` of the new total) and
    decay follow the new horizon, and the optimizer's LR is set to the new curve's value now.
    """
    factor = lr_factor(cfg, total_steps)
    scheduler.lr_lambdas = [factor] * len(scheduler.optimizer.param_groups)
    step = scheduler.last_epoch
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
