"""One student's training loop: soft labels from the teacher, hard labels where a row has one.

Rows are tokenised once, batched by similar length (little padding: a BiLSTM's cost is its
longest row) and reshuffled every epoch; the learning rate decays linearly to zero.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from e2ekit.core.progress import progress
from e2ekit.text.distill.loss import distill_loss
from e2ekit.text.runner import text_examples

BUCKET = 50  # length-sort within windows of BUCKET batches: little padding, still shuffled


@dataclass(frozen=True)
class StudentFit:
    """How a student is fitted: optimiser, epochs and the loss mix."""

    epochs: int
    batch_size: int
    lr: float
    temperature: float
    soft_weight: float
    soft_loss: str
    optimizer: str = "adam"  # adamw for the tiny transformer
    seed: int = 0


def encode_items(tokenizer: Any, items: Sequence[Any], max_len: int) -> list[dict]:
    """Token features of raw texts or pairs (the text kit's own encoding, so serving agrees)."""
    from e2ekit.text.data import encode_text

    feats, _ = encode_text(text_examples(items), tokenizer, None, max_len)
    return feats


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * BUCKET
    batches: list[list[int]] = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def fit_student(
    model: nn.Module,
    feats: list[dict],
    labels: np.ndarray,
    teacher_logits: np.ndarray | None,
    fit: StudentFit,
    *,
    pad_id: int,
    desc: str,
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``feats``; ``labels`` holds -100 where a row has none.

    ``teacher_logits`` None trains on the labels alone (the baseline). Returns the seconds,
    steps and the mean loss of the last epoch.
    """
    from e2ekit.text.data import pad_batch

    if len(feats) != len(labels):
        raise ValueError(f"{len(feats)} rows but {len(labels)} labels")
    keep = np.arange(len(feats)) if teacher_logits is not None else np.flatnonzero(labels >= 0)
    if len(keep) == 0:
        raise ValueError("no labelled rows to train on")
    rng = random.Random(fit.seed)
    torch.manual_seed(fit.seed)
    lengths = [len(feats[i]["input_ids"]) for i in keep]
    steps_per_epoch = math.ceil(len(keep) / fit.batch_size)
    total = steps_per_epoch * fit.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    if fit.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=fit.lr, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(params, lr=fit.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    soft_weight = fit.soft_weight if teacher_logits is not None else 0.0
    teacher = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
    all_labels = torch.from_numpy(labels.astype(np.int64))
    call = forward or (lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    model.train()
    t0 = time.perf_counter()
    bar = progress(total=total, desc=desc, unit="step")
    last = 0.0
    try:
        for _ in range(fit.epochs):
            running, seen = 0.0, 0
            for batch_pos in _batches(lengths, fit.batch_size, rng):
                rows = keep[batch_pos]
                batch = pad_batch([feats[i] for i in rows], pad_id)
                index = torch.from_numpy(rows)
                logits = call(model, batch)
                loss = distill_loss(
                    logits.float(),
                    teacher[index] if teacher is not None else torch.zeros_like(logits),
                    all_labels[index],
                    temperature=fit.temperature,
                    soft_weight=soft_weight,
                    soft=fit.soft_loss,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(rows)
                seen += len(rows)
                bar.update(1)
            last = running / max(seen, 1)
            bar.set_postfix(loss=f"{last:.4f}")
    finally:
        bar.close()
    model.eval()
    return {"seconds": round(time.perf_counter() - t0, 1), "steps": total, "loss": round(last, 5)}
