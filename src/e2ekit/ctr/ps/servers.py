"""The two kinds of parameter server: a shard of table rows, and the dense weights.

Both are plain classes (tested in-process) that :mod:`e2ekit.ctr.ps.pool` runs as Ray actors.

:class:`RowShard` owns the keys ``key % servers == index`` (a global table row is a hashed
bucket plus its slot's offset, so the remainder spreads keys evenly). It holds only rows that
exist: a dense ``key // servers -> slot`` index (8 bytes per possible key, no per-key Python
object) over growing row and optimizer-state arrays, with slots of evicted rows reused. Rows
are created on first use (or once admitted), initialised as the model's table (normal, std
1e-4), and updated by the same fused :class:`~e2ekit.ctr.engine.row_optim.RowOptimizer` the
other trainers use, so ``sparse_optim`` means the same in every mode.

:class:`DenseServer` holds everything but the table and applies the dense optimizer (and the
LR schedule) once per pushed gradient: each push is one global step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from e2ekit.ctr.engine.row_optim import RowOptimizer

INIT_STD = 1e-4  # the model table's init (SlotEmbedding)
_MIN_CAPACITY = 1024


def tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor view of an array Ray handed over (read-only shared memory: read, never written)."""
    if isinstance(array, torch.Tensor):
        return array if dtype is None else array.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": we only read it
        t = torch.from_numpy(np.asarray(array))
    return t if dtype is None else t.to(dtype)


def shard_of(keys: torch.Tensor, servers: int) -> torch.Tensor:
    """The shard that owns each global row key."""
    return torch.remainder(keys, servers)


class RowShard:
    """Rows ``key % count == index`` and their optimizer state; rows exist once used."""

    def __init__(
        self,
        index: int,
        count: int,
        num_keys: int,
        width: int,
        sparse_optim: dict[str, Any],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        admit_after: int = 0,
        evict_after_s: float | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        torch.set_num_threads(1)  # a server answers many small calls; threads only contend
        self.index, self.count, self.width = index, count, width
        self.local_keys = max(0, -(-(num_keys - index) // count))
        self.slot_of = torch.full((self.local_keys,), -1, dtype=torch.int64)
        self.admit_after = admit_after
        self.seen = torch.zeros(self.local_keys, dtype=torch.int32) if admit_after > 1 else None
        self.evict_after_s = evict_after_s
        self.clock = clock
        self.last_sweep = clock()
        self.base_lr = float(sparse_optim["lr"])
        self.initial_accumulator = float(sparse_optim.get("initial_accumulator", 0.0))
        self.opt = RowOptimizer(
            torch.zeros(0, width),
            sparse_optim["type"],
            lr=self.base_lr,
            eps=float(sparse_optim.get("eps", 1e-8)),
            betas=betas,
            initial_accumulator=self.initial_accumulator,
            weight_decay=float(sparse_optim.get("weight_decay", 0.0)),
        )
        self.key_of = torch.empty(0, dtype=torch.int64)  # slot -> key; -1 = free
        self.touched = torch.empty(0, dtype=torch.float64)  # slot -> last pull/push time
        self.used = 0  # slots handed out so far (high-water mark)
        self.free = torch.empty(0, dtype=torch.int64)
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        self.evicted = 0

    # -- storage --------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self.key_of.numel()
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, _MIN_CAPACITY)

        def grown(t: torch.Tensor, fill: float) -> torch.Tensor:
            out = torch.full((new_cap, *t.shape[1:]), fill, dtype=t.dtype)
            out[:cap] = t
            return out

        self.opt.table = grown(self.opt.table, 0.0)
        for name, value in self.opt.state.items():
            if name != "step":
                self.opt.state[name] = grown(value, self._state_init(name))
        self.key_of = grown(self.key_of, -1)
        self.touched = grown(self.touched, 0.0)

    def _state_init(self, name: str) -> float:
        return self.initial_accumulator if name == "sum" else 0.0

    def _create(self, local: torch.Tensor) -> torch.Tensor:
        """Fresh rows (init std 1e-4, empty optimizer state) for ``local`` keys; their slots."""
        n = local.numel()
        reuse = self.free[:n]
        self.free = self.free[n:]
        extra = n - reuse.numel()
        self._grow(self.used + extra)
        slots = torch.cat([reuse, torch.arange(self.used, self.used + extra)])
        self.used += extra
        self.opt.table[slots] = torch.randn(n, self.width, generator=self.gen) * INIT_STD
        for name, value in self.opt.state.items():
            if name != "step":
                value[slots] = self._state_init(name)
        self.key_of[slots] = local * self.count + self.index
        self.slot_of[local] = slots
        return slots

    def _local(self, keys: np.ndarray) -> torch.Tensor:
        k = tensor(keys, torch.int64)
        return torch.div(k, self.count, rounding_mode="floor")

    # -- the workers' calls ---------------------------------------------------------------
    @torch.no_grad()
    def pull(self, keys: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Rows of unique ``keys`` (zeros for a key not admitted yet); ``counts``: how many
        training rows of the batch hold each key (admission counts those)."""
        local = self._local(keys)
        slots = self.slot_of[local]
        missing = slots < 0
        if bool(missing.any()):
            where = torch.nonzero(missing).squeeze(1)
            if self.seen is not None:
                add = torch.ones(where.numel(), dtype=torch.int32)
                if counts is not None:
                    add = tensor(counts, torch.int32)[where]
                seen = self.seen[local[where]] + add
                self.seen[local[where]] = seen
                where = where[seen >= self.admit_after]
            if where.numel():
                slots[where] = self._create(local[where])
        out = torch.zeros(local.numel(), self.width)
        held = torch.nonzero(slots >= 0).squeeze(1)
        out[held] = self.opt.table[slots[held]]
        if self.evict_after_s is not None:
            self.touched[slots[held]] = self.clock()
        return out.numpy()

    @torch.no_grad()
    def push(self, keys: np.ndarray, grads: np.ndarray, lr_scale: float = 1.0) -> int:
        """Apply one step of summed row gradients (unique ``keys``); gradients of keys with
        no row (not admitted, or evicted since the pull) are dropped. Returns rows held."""
        slots = self.slot_of[self._local(keys)]
        held = torch.nonzero(slots >= 0).squeeze(1)
        if held.numel():
            self.opt.lr = self.base_lr * lr_scale
            g = tensor(grads, torch.float32)[held]
            self.opt.step(slots[held], g)
            if self.evict_after_s is not None:
                self.touched[slots[held]] = self.clock()
        if self.evict_after_s is not None and self.clock() - self.last_sweep > max(
            self.evict_after_s / 4, 0.01
        ):
            self.evict()
        return self.held()

    # -- maintenance ----------------------------------------------------------------------
    def held(self) -> int:
        return self.used - self.free.numel()

    @torch.no_grad()
    def evict(self) -> int:
        """Drop rows untouched for ``evict_after_s``: the key starts over (and must be
        admitted again). Returns how many were dropped."""
        now = self.clock()
        self.last_sweep = now
        if self.evict_after_s is None or self.used == 0:
            return 0
        live = self.key_of[: self.used] >= 0
        stale = torch.nonzero(live & (self.touched[: self.used] < now - self.evict_after_s))
        stale = stale.squeeze(1)
        if stale.numel() == 0:
            return 0
        local = torch.div(self.key_of[stale], self.count, rounding_mode="floor")
        self.slot_of[local] = -1
        if self.seen is not None:
            self.seen[local] = 0
        self.key_of[stale] = -1
        self.free = torch.cat([self.free, stale])
        self.evicted += int(stale.numel())
        return int(stale.numel())

    def export(self) -> dict[str, Any]:
        """Held rows with their keys and optimizer state, and the admission counts."""
        slots = torch.nonzero(self.key_of[: self.used] >= 0).squeeze(1)
        state = {
            name: value[slots].clone() for name, value in self.opt.state.items() if name != "step"
        }
        pending: dict[str, torch.Tensor] = {}
        if self.seen is not None:
            waiting = torch.nonzero(self.seen > 0).squeeze(1)
            waiting = waiting[self.slot_of[waiting] < 0]
            pending = {"keys": waiting * self.count + self.index, "counts": self.seen[waiting]}
        return {
            "keys": self.key_of[slots].clone(),
            "rows": self.opt.table[slots].clone(),
            "state": state,
            "step": float(self.opt.state["step"]),
            "pending": pending,
            "evicted": self.evicted,
        }

    @torch.no_grad()
    def load(self, part: dict[str, Any]) -> int:
        """Hold the rows (and state) of ``part`` as :meth:`export` wrote it; returns held."""
        keys = torch.as_tensor(part["keys"], dtype=torch.int64)
        if keys.numel():
            local = torch.div(keys, self.count, rounding_mode="floor")
            slots = self.slot_of[local]
            new = slots < 0
            slots[new] = self._create(local[new])
            self.opt.table[slots] = torch.as_tensor(part["rows"], dtype=torch.float32)
            for name, value in part.get("state", {}).items():
                if name in self.opt.state and name != "step":
                    self.opt.state[name][slots] = torch.as_tensor(value, dtype=torch.float32)
            self.touched[slots] = self.clock()
        self.opt.state["step"].fill_(float(part.get("step", 0.0)))
        pending = part.get("pending") or {}
        if self.seen is not None and len(pending.get("keys", ())):
            local = torch.div(
                torch.as_tensor(pending["keys"], dtype=torch.int64),
                self.count,
                rounding_mode="floor",
            )
            self.seen[local] = torch.as_tensor(pending["counts"], dtype=torch.int32)
        return self.held()


class DenseServer:
    """The dense weights (everything but the table) and their optimizer and LR schedule."""

    def __init__(self, cfg_dict: dict[str, Any], total_steps: int | None = None) -> None:
        from e2ekit.core.engine.optim import build_optimizer, build_scheduler, param_groups
        from e2ekit.ctr.config import CtrConfig
        from e2ekit.ctr.engine.stepper import build_model

        torch.set_num_threads(1)
        cfg = CtrConfig.model_validate(cfg_dict)
        model = build_model(cfg)
        self.params = model.dense_parameters()
        self.opt = build_optimizer(model, cfg.optim, param_groups(model, cfg.optim, self.params))
        self.sched = build_scheduler(self.opt, cfg.sched, total_steps) if total_steps else None
        self.base_lr = cfg.optim.lr
        self.version = 0  # dense updates applied: the global step
        self.rows = 0  # training rows behind those updates (progress)
        self.pulls = 0

    def _lr_scale(self) -> float:
        return 1.0 if self.sched is None else self.sched.get_last_lr()[0] / self.base_lr

    def pull(self) -> tuple[np.ndarray, int, float]:
        """(flat weights, version, LR factor of the schedule now)."""
        self.pulls += 1
        flat = torch.nn.utils.parameters_to_vector(self.params).detach().numpy().copy()
        return flat, self.version, self._lr_scale()

    def push(self, grad: np.ndarray, rows: int = 0) -> int:
        """One optimizer (and schedule) step with the flat dense gradient; the new version."""
        flat = tensor(grad, torch.float32)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.version += 1
        self.rows += rows
        return self.version

    def progress(self) -> int:
        return self.rows

    def counters(self) -> dict[str, int]:
        return {"version": self.version, "rows": self.rows, "pulls": self.pulls}

    def export(self) -> dict[str, Any]:
        return {
            "weights": torch.nn.utils.parameters_to_vector(self.params).detach().numpy().copy(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "version": self.version,
        }

    def load(self, state: dict[str, Any]) -> int:
        """Weights, optimizer/schedule state and version (any of them) from the trainer."""
        if state.get("weights") is not None:
            flat = tensor(state["weights"], torch.float32)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(flat, self.params)
        if state.get("optimizer"):
            self.opt.load_state_dict(state["optimizer"])
        if state.get("scheduler") and self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.version = int(state.get("version", self.version))
        return self.version
