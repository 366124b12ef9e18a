"""The ``ps`` section of the ctr config: parameter servers and workers on Ray."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from e2ekit.core.schema import Strict


class PsConfig(Strict):
    """``train.mode: ps``: row shards and dense weights on Ray server actors."""

    servers: int = Field(2, ge=1, description="server actors the table rows are sharded over")
    workers: int = Field(2, ge=1, description="worker actors, each reading its share of files")
    address: str | None = Field(
        None, description="Ray cluster to join (ray://host:10001 or auto); null = a local Ray"
    )
    admit_after: int = Field(
        0,
        ge=0,
        description="a key gets a trainable row only once it was seen in this many training "
        "rows; until then it reads zeros and its gradient is dropped; 0 = at first sight",
    )
    evict_after_s: float | None = Field(
        None,
        gt=0,
        description="drop rows no worker pulled or pushed for this many seconds (checked as "
        "pushes arrive and at the end of every pass); a dropped key starts over; null = keep",
    )
    max_staleness: int = Field(
        4,
        ge=0,
        description="steps whose pushes a worker may have in flight (not yet applied by the "
        "servers) before it waits for the oldest; 0 = every step waits for its own push",
    )
    dense_pull_every: int = Field(
        1,
        ge=1,
        description="a worker pulls the dense weights every this many steps and trains on its "
        "copy in between (its own dense gradients reach it only through the server)",
    )
    max_workers: int | None = Field(
        None,
        ge=1,
        description="workers may join while a pass runs, up to this many, whenever the Ray "
        "cluster has a free CPU (an autoscaled node came up); a joining worker takes units "
        "from the same queue; null = ps.workers (no joining)",
    )
    max_worker_restarts: int = Field(
        3,
        ge=0,
        description="dead workers replaced per run before the run fails; the dead worker's "
        "unfinished unit goes back to the queue",
    )
    unit_mb: float = Field(
        16.0,
        gt=0,
        description="files are handed to workers in units of about this many MB (byte ranges "
        "of whole lines; a compressed file is one unit)",
    )


def ps_problems(cfg: Any) -> list[str]:
    """Settings that ``train.mode: ps`` cannot honour (cross-field checks of a CtrConfig)."""
    if cfg.train.mode != "ps":
        return []
    found = []
    if cfg.train.hooks:
        found.append(
            "train.hooks: ps workers step in Ray actors, where hooks cannot run; use "
            "train.mode=sync or ddp with hooks"
        )
    if cfg.train.eval_interval:
        found.append(
            "train.eval_interval: a ps pass evaluates when it ends; use train.mode=sync or "
            "ddp to evaluate every N steps"
        )
    if cfg.train.save_interval:
        found.append(
            "train.save_interval: a ps pass saves when it ends; use train.mode=sync or ddp "
            "for step-interval saves"
        )
    if cfg.ps.max_workers is not None and cfg.ps.max_workers < cfg.ps.workers:
        found.append(
            f"ps.max_workers ({cfg.ps.max_workers}) must be at least ps.workers "
            f"({cfg.ps.workers}): it is the ceiling workers may grow to"
        )
    if cfg.stream.evict_after:
        found.append("stream.evict_after: ps shards evict by time; set ps.evict_after_s instead")
    return found
