"""The run skeleton every training loop stands on: one run folder, one bookkeeping.

A loop (the core :class:`~e2ekit.core.engine.trainer.Trainer` over an indexable dataset, the
ctr kit's loop over streamed files) decides *how* to step; :class:`Run` owns *what a run
leaves behind*, so every kit's run folder is the same contract:

``config.yaml`` (resolved), ``env.json`` (versions, commit, CPU/GPU), ``train.log``,
``metrics.jsonl`` (+ TensorBoard), ``best.pt`` / ``last.pt`` and ``metrics.json`` (the best
evaluation), with best-metric tracking and early stopping decided here alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from e2ekit.core.config import save_config
from e2ekit.core.engine.best import (
    best_record,
    defined,
    is_better,
    require_metric,
    write_final_metrics,
)
from e2ekit.core.engine.checkpoint import atomic_torch_save, remove_stale_temps
from e2ekit.core.engine.curves import CURVES_FILE, read_evals, write_curves
from e2ekit.core.engine.provenance import write_env_record
from e2ekit.core.errors import CheckpointError
from e2ekit.core.logs import MetricsWriter, add_file_log, log, remove_handler
from e2ekit.core.schema import RunConfig

__all__ = ["Run", "RunLoop", "RunOptions", "default_run_dir"]

# Files whose presence makes a folder a run that a new training would overwrite.
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.json")
# What --overwrite removes before the new run starts (so no file mixes two runs).
OWN_FILES = (*RUN_FILES, "train.log", "env.json", CURVES_FILE)
OWN_FOLDERS = ("tb", "checkpoints", "exports")


@dataclass(frozen=True)
class RunOptions:
    """How a run starts, as ``train``'s flags say: from scratch, resumed, or from weights."""

    config_name: str = "config"
    resume: bool = False
    weights: str | Path | None = None
    overwrite: bool = False


def default_run_dir(kit: str, config_name: str) -> Path:
    """``runs/<kit>/<config>/<timestamp>``, never an existing folder."""
    base = Path("runs") / kit / config_name / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class Run:
    """Run folder, logs, metrics files, best/early-stop tracking and checkpoint files.

    Only the main process (``is_main``) writes; every rank may call every method.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: Path,
        *,
        metric: str,
        mode: str,
        resume: bool = False,
        overwrite: bool = False,
        is_main: bool = True,
        metric_source: str = "evaluation",
        summary_drop: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.metric, self.mode = metric, mode
        self.resume, self.overwrite, self.is_main = resume, overwrite, is_main
        self.metric_source = metric_source
        self.summary_drop = summary_drop
        self.best: dict[str, Any] | None = None
        self.bad_evals = 0
        self.stop_reason = ""
        self.writer: MetricsWriter | None = None
        self._file_log: Any = None
        self._created_dir = False  # this run made the folder (so a failed start removes it)
        self._there_before: set[str] = set()
        self._saved = False  # a checkpoint exists: the run is worth keeping
        self.history: list[dict[str, Any]] = []  # logged training scalars, for curves.png
        if not resume:
            self._refuse_existing_run()

    # -- folder -------------------------------------------------------------------------------
    def _refuse_existing_run(self) -> None:
        """A new run never silently replaces another run's checkpoints and metrics."""
        if self.overwrite or not self.out_dir.is_dir():
            return
        found = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if found and not {"last.pt", "best.pt"} & set(found):
            # killed before its first save: --resume has nothing to continue from
            raise CheckpointError(
                f"--out {self.out_dir} holds a run that stopped before its first checkpoint "
                f"({', '.join(found)}); pass --overwrite to start it again, or choose another "
                "--out"
            )
        if found:
            raise CheckpointError(
                f"--out {self.out_dir} already holds a run ({', '.join(found)}); continue it "
                "with --resume, pass --overwrite to replace it, or choose another --out"
            )

    def open(self, step: int = 0) -> None:
        """Create the folder and its files; on resume, drop metrics logged after ``step``."""
        if not self.is_main:
            return
        self._created_dir = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.overwrite and not self.resume:
            self._clear_previous_run()
        # what the folder held before this run: a failed start never removes it
        self._there_before = {p.name for p in self.out_dir.iterdir()}
        for stale in remove_stale_temps(self.out_dir):
            log.info("removed %s (a save cut short by a kill)", stale.name)
        if not self.resume:
            save_config(self.cfg, self.out_dir / "config.yaml")
        write_env_record(self.out_dir / "env.json")
        self._file_log = add_file_log(self.out_dir / "train.log")
        self.writer = MetricsWriter(self.out_dir, self.cfg.train.tensorboard)
        if self.resume:
            self.writer.truncate_after(step)

    def _clear_previous_run(self, keep: frozenset[str] = frozenset()) -> None:
        """Remove a run's files (not those named in ``keep``), nothing else in the folder."""
        for name in OWN_FILES:
            if name not in keep:
                (self.out_dir / name).unlink(missing_ok=True)
        for name in OWN_FOLDERS:
            if name not in keep and (self.out_dir / name).is_dir():
                shutil.rmtree(self.out_dir / name)

    def discard_if_unsaved(self) -> None:
        """A new run that failed before its first checkpoint (bad data at step 0, Ctrl-C)
        leaves nothing behind: its own files go, and the folder if the run made it."""
        if not self.is_main or self.resume or self._saved or not self.out_dir.is_dir():
            return
        self.close()
        self._clear_previous_run(keep=frozenset(self._there_before))
        if self._created_dir and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        remove_handler(self._file_log)
        self._file_log = None

    # -- logging ------------------------------------------------------------------------------
    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            self.writer.scalars(values, step)
        if self.is_main:
            self.history.append({"step": step, **values})

    def record_eval(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write_eval(record)

    # -- best and early stop ------------------------------------------------------------------
    def track(self, metrics: dict[str, Any], step: int) -> bool:
        """Whether ``metrics`` is the best evaluation so far (then ``best.pt`` is due).

        An undefined value (NaN or None, e.g. AUC on one-class data) never beats a defined
        one; as the first evaluation it is kept as best so a run always has a ``best.pt``.
        ``train.early_stop.patience`` evaluations without a gain set ``stop_reason``.
        """
        require_metric(self.metric, metrics, self.metric_source)
        value = metrics[self.metric]
        es = self.cfg.train.early_stop
        if defined(value) and is_better(self.best, float(value), self.mode, es.min_delta):
            self.best = best_record(self.metric, float(value), step, metrics)
            self.bad_evals = 0
            return True
        if not defined(value) and self.best is None:
            log.warning("eval: %s is undefined on this val data (one class?)", self.metric)
            self.best = best_record(self.metric, None, step, metrics)
            return True
        self.bad_evals += 1
        if es.patience and self.bad_evals >= es.patience:
            self.stop_reason = f"early stop: no {self.metric} gain in {es.patience} evaluations"
            log.info(self.stop_reason)
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps so a resumed run tracks best and patience exactly."""
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.best = ckpt.get("best")
        self.bad_evals = int(ckpt.get("bad_evals", 0))

    # -- files --------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], *names: str) -> list[Path]:
        """Write ``state`` atomically under each of ``names`` (default ``last.pt``)."""
        if not self.is_main:
            return []
        paths = [self.out_dir / name for name in (names or ("last.pt",))]
        for path in paths:
            atomic_torch_save(state, path)
        self._saved = True
        return paths

    def last_checkpoint(self) -> Path:
        path = self.out_dir / "last.pt"
        if not path.is_file():
            hint = ""
            if (self.out_dir / "config.yaml").is_file():  # the run stopped before its first save
                hint = (
                    " (the run stopped before its first checkpoint); start it again with "
                    f"-c {self.out_dir / 'config.yaml'} --out {self.out_dir} --overwrite"
                )
            raise CheckpointError(f"--resume: {path} does not exist; nothing to resume from{hint}")
        return path

    def finish(self, step: int) -> dict[str, Any]:
        """Write ``metrics.json`` (the best evaluation) and return its one-line summary."""
        if not self.is_main:
            return {}
        summary = write_final_metrics(self.out_dir, self.best, step, self.summary_drop)
        self._draw_curves()
        return summary

    def _draw_curves(self) -> None:
        """``curves.png``; a picture that cannot be drawn never fails a finished run."""
        try:
            evals = read_evals(self.out_dir / "metrics.jsonl")
            title = str(self.out_dir)
            write_curves(self.out_dir, self.history, evals, self.metric, self.mode, title)
        except Exception as exc:  # the run's results are already saved
            log.warning("could not draw %s: %s", CURVES_FILE, exc)


class RunLoop:
    """Base of a training loop that stands on a :class:`Run`: hooks and callers read the
    run's state through the loop (``trainer.best``, ``trainer.stop_reason``)."""

    run: Run
    out_dir: Path
    step: int

    def attach_run(
        self, cfg: RunConfig, out_dir: str | Path | None, kit: str, config_name: str, **options: Any
    ) -> None:
        """Create the loop's :class:`Run` (in ``out_dir`` or a new default run folder)."""
        self.out_dir = Path(out_dir) if out_dir else default_run_dir(kit, config_name)
        self.run = Run(cfg, self.out_dir, **options)

    @property
    def best(self) -> dict[str, Any] | None:
        return self.run.best

    @property
    def stop_reason(self) -> str:
        return self.run.stop_reason

    @property
    def writer(self) -> MetricsWriter | None:
        return self.run.writer
