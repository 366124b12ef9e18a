"""A ps worker: reads its units of data, pulls rows and dense weights, pushes gradients.

Per batch: ``model.rows(sparse)`` gives the global row keys; only the batch's unique keys are
pulled, each from its shard, together with the dense weights (every ``ps.dense_pull_every``
steps). The rows become a leaf ``(B, S, width)`` tensor, ``model.head(dense, model.pool(...))``
gives the logits, and after backward the row gradients summed per unique key go to their shards
and the dense gradient to the dense server without waiting: at most ``ps.max_staleness``
steps' pushes are in flight before the worker waits for the oldest. A unit is reported done
only once every push it made was applied, so a finished unit's updates are never lost.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import ray
import torch
from torch import nn

from e2ekit.ctr.ps.servers import shard_of, tensor

MAX_SHOWN_BAD = 5


class PsWorker:
    """Trains units (``path``, byte range ``part`` of ``parts``) against the servers."""

    def __init__(
        self,
        name: str,
        cfg_dict: dict[str, Any],
        shards: list[Any],
        dense: Any,
        threads: int,
        seed: int,
    ) -> None:
        from e2ekit.core.engine.amp import resolve_amp
        from e2ekit.ctr.config import CtrConfig
        from e2ekit.ctr.engine.stepper import build_model

        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # dropout
        self.name = name
        self.cfg = CtrConfig.model_validate(cfg_dict)
        self.model = build_model(self.cfg)
        self.model.train()
        table = self.model.tables.embedding  # rows live on the shards: free the local copy
        table.weight = nn.Parameter(torch.empty(0, table.weight.shape[1]), requires_grad=False)
        self.params = self.model.dense_parameters()
        self.shards, self.dense = shards, dense
        self.servers = len(shards)
        ps = self.cfg.ps
        self.count_keys = ps.admit_after > 1
        self.staleness = ps.max_staleness
        self.pull_every = ps.dense_pull_every
        self.clip = self.cfg.train.clip_grad_norm
        self.amp = resolve_amp(self.cfg.train.amp, torch.device("cpu"))
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.steps = 0
        self.pulls_sent = 0
        self.lr_scale = 1.0
        self.dense_pulls = 0
        self.max_in_flight = 0  # most steps' pushes un-acknowledged after a step (staleness)

    def ready(self) -> str:
        return self.name

    def train_unit(self, path: str, part: int, parts: int, epoch: int) -> dict[str, Any]:
        """Train one unit; returns its stats once all its pushes were applied."""
        from e2ekit.ctr.data.splits import make_stream

        stream = make_stream(
            self.cfg, path, train=True, epoch=epoch, shard=(part, parts) if parts > 1 else None
        )
        pending: collections.deque[list[Any]] = collections.deque()
        steps = rows = 0
        loss_sum = 0.0
        t0 = time.perf_counter()
        batches = iter(stream)
        batch = next(batches, None)
        pulled = self._pull(batch) if batch is not None else None
        while batch is not None:
            loss_sum += self._step(batch, pulled, pending)
            steps += 1
            rows += len(batch["label"])
            batch = next(batches, None)
            # sent after this step's pushes: a shard answers them in order, so the next
            # batch sees this worker's own updates (pulling ahead bought no speed on busy
            # cores and cost AUC)
            pulled = self._pull(batch) if batch is not None else None
        while pending:
            ray.get(pending.popleft())
        stats = stream.stats
        return {
            "worker": self.name,
            "steps": steps,
            "rows": rows,
            "seconds": time.perf_counter() - t0,
            "loss_sum": loss_sum,
            "bad_rows": stats.bad_rows,
            "first_bad": list(stats.first_bad)[:MAX_SHOWN_BAD],
            "dense_pulls": self.dense_pulls,
            "max_in_flight": self.max_in_flight,
        }

    def _pull(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Send the pulls of ``batch``'s unique keys (and of the dense weights when due)."""
        keys = self.model.rows(batch["sparse"]).reshape(-1)
        uniq, inverse, *counted = torch.unique(
            keys, return_inverse=True, return_counts=self.count_keys
        )
        owner = shard_of(uniq, self.servers)
        parts = [torch.nonzero(owner == s).squeeze(1) for s in range(self.servers)]
        part_keys = [uniq[p].numpy() for p in parts]
        refs = [
            shard.pull.remote(k, counted[0][p].numpy() if counted else None)
            for shard, k, p in zip(self.shards, part_keys, parts, strict=True)
        ]
        pull_dense = self.pulls_sent % self.pull_every == 0
        self.pulls_sent += 1
        if pull_dense:
            refs.append(self.dense.pull.remote())
            self.dense_pulls += 1
        return {
            "uniq": uniq,
            "inverse": inverse,
            "parts": parts,
            "part_keys": part_keys,
            "refs": refs,
            "dense": pull_dense,
        }

    def _step(
        self, batch: dict[str, torch.Tensor], pulled: dict[str, Any], pending: collections.deque
    ) -> float:
        from e2ekit.core.engine.amp import autocast

        dense, sparse, label = batch["dense"], batch["sparse"], batch["label"]
        n = sparse.shape[0]
        uniq, inverse, parts = pulled["uniq"], pulled["inverse"], pulled["parts"]
        part_keys, pull_dense = pulled["part_keys"], pulled["dense"]
        got = ray.get(pulled["refs"])
        if pull_dense:
            flat, _, self.lr_scale = got.pop()
            with torch.no_grad():
                nn.utils.vector_to_parameters(tensor(flat), self.params)
        width = got[0].shape[1] if got else 0
        table = torch.empty(uniq.numel(), width)
        for p, r in zip(parts, got, strict=True):
            table[p] = tensor(r)
        emb = table.index_select(0, inverse).view(n, -1, width).requires_grad_()
        with autocast(torch.device("cpu"), self.amp):
            logits = self.model.head(dense, self.model.pool(emb, sparse))
        loss = self.loss_fn(logits.float(), label)
        for p in self.params:
            p.grad = None
        loss.backward()
        row_grad = torch.zeros_like(table).index_add_(0, inverse, emb.grad.view(-1, width))
        dense_grad = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.params
            ]
        )
        if self.clip:  # one norm over the dense and the row gradient, as the Stepper clips
            norm = torch.sqrt(dense_grad.pow(2).sum() + row_grad.pow(2).sum())
            scale = self.clip / (float(norm) + 1e-6)
            if scale < 1:
                dense_grad.mul_(scale)
                row_grad.mul_(scale)
        pushes = [
            shard.push.remote(k, row_grad[p].numpy(), self.lr_scale)
            for shard, k, p in zip(self.shards, part_keys, parts, strict=True)
        ]
        pushes.append(self.dense.push.remote(dense_grad.numpy(), n))
        pending.append(pushes)
        while len(pending) > self.staleness:
            ray.get(pending.popleft())
        self.max_in_flight = max(self.max_in_flight, len(pending))
        self.steps += 1
        return float(loss.detach())
