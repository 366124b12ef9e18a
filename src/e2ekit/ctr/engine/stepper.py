"""One CTR training step, shared by the sync, Hogwild and DDP trainers, and evaluation.

The step looks the batch's rows up from the slot table as a plain leaf tensor, runs the
model's dense ``head``, and after backward hands the rows' gradient to the fused
:class:`RowOptimizer` (the dense part goes to a normal torch optimizer). Under torchrun the
dense grads are all-reduced and the row grads all-gathered, so every rank applies the same
updates to its own full replica of the table (replicas never drift).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from e2ekit.core.engine.amp import autocast, make_scaler, resolve_amp
from e2ekit.core.engine.optim import build_optimizer, build_scheduler, param_groups
from e2ekit.core.engine.trainer import to_device
from e2ekit.core.errors import ConfigError
from e2ekit.core.progress import progress
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.engine.row_optim import RowOptimizer
from e2ekit.ctr.features import layout_of
from e2ekit.ctr.metrics import CtrMetrics
from e2ekit.ctr.models.zoo import CtrModel
from e2ekit.ctr.registry import MODELS


def build_model(cfg: CtrConfig) -> CtrModel:
    """The configured zoo model; only the keys the user set are passed (tiny variants fix dims)."""
    import e2ekit.ctr.models  # noqa: F401  (registers the zoo)

    m = cfg.model
    spec: dict[str, Any] = {"type": m.type, "hash_size": m.hash_size, "layout": layout_of(cfg)}
    for key in ("embed_dim", "mlp_dims", "num_layers"):
        if getattr(m, key) is not None:
            spec[key] = getattr(m, key)
    if m.dropout:
        spec["dropout"] = m.dropout
    try:
        model = MODELS.build(spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.{m.type}: {exc}") from None
    if not isinstance(model, CtrModel):
        raise ConfigError(f"model.type '{m.type}' is not a CTR model (a ctr zoo CtrModel)")
    return model


class RowUpdate(torch.optim.Optimizer):
    """The row optimizer's step seen as a torch optimizer, so ``GradScaler`` unscales the
    row gradient, finds infs and skips the step exactly as it does for the dense part, and
    ``clip_grad_norm_`` sees one parameter holding the (gathered) row gradient."""

    def __init__(self, rows: RowOptimizer) -> None:
        self.holder = torch.zeros(1, device=rows.table.device, requires_grad=True)
        super().__init__([self.holder], {})
        self.rows = rows
        self.ids: torch.Tensor | None = None

    def bind(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """Hold ``grad (N, width)`` of rows ``ids`` for this step's unscale/clip/step."""
        holder = torch.empty_like(grad, requires_grad=True)
        holder.grad = grad
        self.param_groups[0]["params"] = [holder]
        self.ids = ids

    @property
    def param(self) -> torch.Tensor:
        return self.param_groups[0]["params"][0]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert self.ids is not None, "bind() the step's rows first"
        self.rows.step(self.ids, self.param.grad)


class Stepper:
    """Model + dense optimizer + fused row optimizer; ``step(batch)`` returns the loss.

    Runs on ``device`` (the table and its optimizer state live there), under ``train.amp``
    autocast (fp16 with loss scaling), clips the dense and row gradients together to
    ``train.clip_grad_norm``, and follows ``sched`` on the dense and the row learning rate.
    The returned loss stays on the device: the caller reads it at log intervals.
    """

    def __init__(
        self,
        model: CtrModel,
        cfg: CtrConfig,
        distributed: bool = False,
        device: torch.device | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.model = model.to(self.device)
        self.cfg = cfg
        self.table = model.tables.embedding.weight
        self.width = int(self.table.shape[1])
        self.dense_params = model.dense_parameters()
        groups = param_groups(model, cfg.optim, self.dense_params)
        self.dense_opt = build_optimizer(model, cfg.optim, groups)
        so = cfg.sparse_optim
        self.row_lr = so.lr or cfg.optim.lr
        self.rows = RowOptimizer(
            self.table.data,
            so.type,
            lr=self.row_lr,
            eps=so.eps,
            betas=cfg.optim.betas,
            initial_accumulator=so.initial_accumulator,
            weight_decay=so.weight_decay,
        )
        self.row_update = RowUpdate(self.rows)
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        self.scaler = make_scaler(self.device, self.amp_dtype)
        self.clip = cfg.train.clip_grad_norm
        self.total_steps = total_steps
        self.scheduler = (
            build_scheduler(self.dense_opt, cfg.sched, total_steps) if total_steps else None
        )
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.distributed = distributed
        self.world = tdist.get_world_size() if distributed else 1
        self.seen: torch.Tensor | None = None  # per-row last partition seen (eviction)
        self.changed: torch.Tensor | None = None  # rows updated since the last publish
        self.partition = 0

    def fast_forward(self, step: int) -> None:
        """Put the LR schedule at optimizer step ``step`` (a Hogwild worker after resume)."""
        if self.scheduler is None or self.scheduler.last_epoch >= step:
            return
        self.scheduler.last_epoch = step - 1
        self.scheduler.step()
        self.rows.lr = self.row_lr * self.scheduler.get_last_lr()[0] / self.cfg.optim.lr

    def track_rows(self) -> None:
        """Start recording when each table row was last looked up (for eviction)."""
        if self.seen is None:
            self.seen = torch.zeros(self.table.shape[0], dtype=torch.int32, device=self.device)

    def track_changes(self) -> torch.Tensor:
        """Start marking the rows each step (or eviction) changes, for versions that hold
        only those rows; the mask (shared with Hogwild workers) is cleared after a publish."""
        if self.changed is None:
            self.changed = torch.zeros(self.table.shape[0], dtype=torch.bool, device=self.device)
        return self.changed

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = to_device(batch, self.device)
        dense, sparse, label = batch["dense"], batch["sparse"], batch["label"]
        n = sparse.shape[0]
        ids = self.model.rows(sparse).reshape(-1)  # (B * S,) global rows
        emb = self.table.detach().index_select(0, ids).view(n, -1, self.width).requires_grad_()
        with autocast(self.device, self.amp_dtype):
            logits = self.model.head(dense, self.model.pool(emb, sparse))
        loss = self.loss_fn(logits.float(), label)
        self.dense_opt.zero_grad(set_to_none=False)
        self.scaler.scale(loss).backward()
        grad = emb.grad.view(-1, self.width)  # type: ignore[union-attr]
        if self.distributed:
            ids, grad = self._sync(ids, grad)
        self.row_update.bind(ids, grad)
        if self.clip:
            self.scaler.unscale_(self.dense_opt)
            self.scaler.unscale_(self.row_update)
            nn.utils.clip_grad_norm_([*self.dense_params, self.row_update.param], self.clip)
        self.scaler.step(self.dense_opt)
        self.scaler.step(self.row_update)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
            self.rows.lr = self.row_lr * self.scheduler.get_last_lr()[0] / self.cfg.optim.lr
        if self.seen is not None:
            self.seen[ids] = self.partition
        if self.changed is not None:
            self.changed[ids] = True
        return loss.detach()

    def _sync(self, ids: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Average dense grads over ranks; gather every rank's row ids and (scaled) grads."""
        grads = [p.grad for p in self.dense_params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        all_ids = [torch.empty_like(ids) for _ in range(self.world)]
        all_grads = [torch.empty_like(grad) for _ in range(self.world)]
        tdist.all_gather(all_ids, ids)
        tdist.all_gather(all_grads, grad)
        return torch.cat(all_ids), torch.cat(all_grads) / self.world

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "dense_optimizer": self.dense_opt.state_dict(),
            "row_optimizer": self.rows.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "row_lr": self.rows.lr,
            "seen": self.seen,
            "partition": self.partition,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense_opt.load_state_dict(state["dense_optimizer"])
        self.rows.load_state_dict(state["row_optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if state.get("scheduler") and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            self.rows.lr = float(state.get("row_lr", self.rows.lr))
        if state.get("seen") is not None:
            self.seen = state["seen"].to(self.device).clone()
        self.partition = int(state.get("partition", 0))

    def evict(self, older_than: int) -> int:
        """Reset rows whose last lookup is more than ``older_than`` partitions ago."""
        if self.seen is None:
            return 0
        touched = self.rows.touched_rows()
        stale = touched[self.seen[touched] < self.partition - older_than]
        self.rows.reset_rows(stale)
        if self.changed is not None:
            self.changed[stale] = True
        return int(stale.numel())


@torch.inference_mode()
def evaluate(
    model: CtrModel,
    batches: Iterable[dict[str, torch.Tensor]],
    desc: str = "eval",
    total: int | None = None,
    bar: bool = True,
) -> dict[str, Any]:
    """AUC, logloss and calibration of ``model`` over ``batches`` (exact, one pass)."""
    was_training = model.training
    model.eval()
    metrics = CtrMetrics()
    t0 = time.perf_counter()
    meter = progress(desc=desc, total=total, unit="row", unit_scale=True, enabled=bar)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            dense, sparse = to_device((batch["dense"], batch["sparse"]), device)
            probs = torch.sigmoid(model(dense, sparse).float()).cpu()
            metrics.update(batch["label"].numpy(), probs.numpy())
            meter.update(len(probs))
    finally:
        meter.close()
        model.train(was_training)
    result = metrics.compute()
    result["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return result
