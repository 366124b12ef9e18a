"""``e2ekit ctr train --stream DIR``: incremental training on time-partitioned folders.

``DIR/YYYYMMDD/HH/`` (or daily ``DIR/YYYYMMDD/``) partitions are taken in time order once
their donefile (``_SUCCESS``) exists. Each one is first scored by the current model
(progressive validation: the model has never seen these rows, so this is the honest
online AUC), then trained on once, then checkpointed (and exported). The list of trained
partitions lives INSIDE ``last.pt``, written atomically after the partition, so after a
crash ``--resume`` retrains only the partition that was cut short: every partition ends
up in the model exactly once.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.core.fileio import atomic_write_json
from e2ekit.core.logs import jsonable, log
from e2ekit.ctr.data.criteo import list_files
from e2ekit.ctr.engine.fit import CtrTrainer, fmt_metrics

_HOURLY = re.compile(r"^\d{8}/\d{2}$")
_DAILY = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class Partition:
    name: str  # "YYYYMMDD/HH" or "YYYYMMDD"
    path: Path
    done: bool

    @property
    def tag(self) -> str:
        return self.name.replace("/", "-")


def find_partitions(root: str | Path, donefile: str = "_SUCCESS") -> list[Partition]:
    """Every partition folder under ``root``, oldest first, with whether it is complete."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"--stream {root}: no such folder")
    found: list[Partition] = []
    for day in sorted(p for p in base.iterdir() if p.is_dir() and _DAILY.match(p.name)):
        hours = sorted(p for p in day.iterdir() if p.is_dir() and re.fullmatch(r"\d{2}", p.name))
        if hours:
            for hour in hours:
                name = f"{day.name}/{hour.name}"
                found.append(Partition(name, hour, (hour / donefile).exists()))
        else:
            found.append(Partition(day.name, day, (day / donefile).exists()))
    return found


def fit_stream(trainer: CtrTrainer, root: str | Path) -> dict[str, Any]:
    """Train partitions as they complete; returns a summary of this invocation."""
    cfg = trainer.cfg
    sc = cfg.stream
    if cfg.data.cache:
        raise ConfigError(
            "data.cache: streaming reads each partition once (progressive validation, then "
            "one training pass) and never returns to it, so a parsed copy would only add a "
            "write per partition and a cache that grows without end; set data.cache=false "
            "with --stream"
        )
    trainer.open_run_dir()
    state = trainer.stream_state
    state.setdefault("trained", [])
    state.setdefault("history", [])
    if state["trained"]:
        log.info(
            "stream %s: %d partitions already trained (last %s)",
            root,
            len(state["trained"]),
            state["trained"][-1],
        )
    if sc.evict_after:
        trainer.stepper.track_rows()
    trained_now: list[str] = []
    idle_since = time.monotonic()
    try:
        while sc.max_partitions is None or len(state["trained"]) < sc.max_partitions:
            done = set(state["trained"])
            ready = [p for p in find_partitions(root, sc.donefile) if p.done and p.name not in done]
            if not ready:
                if time.monotonic() - idle_since >= sc.idle_timeout:
                    break
                time.sleep(sc.poll_seconds)
                continue
            part = ready[0]
            if state["trained"] and part.name < state["trained"][-1]:
                log.warning(
                    "partition %s completed after %s; training it now",
                    part.name,
                    state["trained"][-1],
                )
            _train_partition(trainer, part)
            trained_now.append(part.name)
            idle_since = time.monotonic()
    finally:
        trainer.close()
    history = state["history"]
    progressive = [h["progressive_auc"] for h in history if h.get("progressive_auc") is not None]
    summary = {
        "partitions_trained": len(trained_now),
        "partitions_total": len(state["trained"]),
        "last_partition": state["trained"][-1] if state["trained"] else None,
        "step": trainer.step,
        "rows_seen": trainer.rows_seen,
        "progressive_auc": history[-1].get("progressive_auc") if history else None,
        "progressive_auc_mean": sum(progressive) / len(progressive) if progressive else None,
    }
    if trainer.is_main:
        atomic_write_json(
            trainer.out_dir / "metrics.json", jsonable({**summary, "history": history})
        )
    return summary


def _train_partition(trainer: CtrTrainer, part: Partition) -> None:
    cfg = trainer.cfg
    sc = cfg.stream
    files = [str(f) for f in list_files(part.path)]
    record: dict[str, Any] = {"partition": part.name}
    if not files:
        log.warning("partition %s has a donefile but no data files; marking it done", part.name)
    else:
        has_model = trainer.step > 0 or trainer.from_weights
        if sc.eval_before_train and has_model:
            before = trainer.evaluate_paths(files, desc=f"eval {part.name}")
            record.update(
                progressive_auc=before.get("auc"),
                progressive_logloss=before.get("logloss"),
                progressive_calibration=before.get("calibration"),
            )
        index = len(trainer.stream_state["trained"])
        stats = trainer.train_pass(files, epoch=index, desc=f"train {part.name}")
        record.update(rows=stats["rows"], rows_per_s=round(stats["rows_per_s"], 1))
        record["bad_rows"] = stats["bad_rows"]
    trainer.stepper.partition += 1
    if sc.evict_after:
        record["evicted_rows"] = trainer.stepper.evict(sc.evict_after)
    trainer.stream_state["trained"].append(part.name)
    trainer.stream_state["history"].append({**record, "step": trainer.step})
    trainer.batch_in_epoch = 0
    trainer.epoch = len(trainer.stream_state["trained"])
    trainer.last_metrics = record
    if trainer.is_main:
        if trainer.writer is not None:
            trainer.writer.write_eval({"step": trainer.step, **record})
        trainer.save("last.pt")
        ckpt_dir = trainer.out_dir / "checkpoints"
        ckpt_dir.mkdir(exist_ok=True)
        shutil.copyfile(trainer.out_dir / "last.pt", ckpt_dir / f"{part.tag}.pt")
        kept = sorted(ckpt_dir.glob("*.pt"))
        for old in kept[: max(0, len(kept) - sc.keep_checkpoints)]:
            old.unlink()
        if sc.export_each:
            from e2ekit.ctr.export import export_model

            export_model(
                trainer.model,
                cfg,
                trainer.out_dir / "exports" / part.tag,
                version=f"step-{trainer.step}-{part.tag}",
                quiet=True,
            )
        trainer.publish(part.tag)
        log.info("partition %s: %s", part.name, fmt_metrics_stream(record))


def fmt_metrics_stream(record: dict[str, Any]) -> str:
    parts = []
    if record.get("progressive_auc") is not None:
        parts.append(f"progressive auc {record['progressive_auc']:.4f}")
        parts.append(f"logloss {record['progressive_logloss']:.4f}")
    if "rows" in record:
        parts.append(f"trained {record['rows']} rows at {record['rows_per_s']:.0f}/s")
    if record.get("evicted_rows"):
        parts.append(f"evicted {record['evicted_rows']} rows")
    return ", ".join(parts) or fmt_metrics(record)
