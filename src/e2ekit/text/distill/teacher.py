"""The teacher: a fine-tuned text model given as a run folder, a checkpoint or an export.

Students learn from its logits, computed on the fast onnxruntime path, so a run folder or
checkpoint is exported first (parity-checked like ``e2ekit text export``); the PyTorch model
is kept as well, because the ``tiny`` student starts from its layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.text.config import TextConfig

CHECKPOINTS = ("best.pt", "last.pt")


@dataclass
class Teacher:
    """Where the teacher's export lives, and (run or checkpoint only) its model and config."""

    export_dir: Path
    deploy: dict[str, Any]
    cfg: TextConfig | None = None
    model: nn.Module | None = None


def _checkpoint_of(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".pt":
        return path
    if path.is_dir():
        for name in CHECKPOINTS:
            if (path / name).is_file():
                return path / name
    return None


def load_teacher(path: str, export_to: Path, task_type: str, *, need_model: bool) -> Teacher:
    """Resolve ``distill.teacher``; export a run's checkpoint into ``export_to``."""
    from e2ekit.core.infer import load_deploy

    where = Path(path)
    if not where.exists():
        raise ConfigError(
            f"distill.teacher: {path} does not exist; give a run folder, a "
            "checkpoint (best.pt) or an export folder"
        )
    if where.is_dir() and (where / "deploy.yaml").is_file():
        if need_model:
            raise ConfigError(
                f"distill.teacher: {path} is an export folder, and the tiny student starts "
                "from the teacher's PyTorch layers; give the teacher's run folder or checkpoint"
            )
        teacher = Teacher(where, load_deploy(where))
    else:
        teacher = _export_checkpoint(path, where, export_to)
    kind = teacher.deploy.get("task")
    if teacher.deploy.get("kit") != "text" or kind not in ("cls", "pair"):
        raise ConfigError(
            f"distill.teacher: {path} is a {teacher.deploy.get('kit')} {kind} model; "
            "distillation takes a text cls or pair teacher"
        )
    if kind != task_type:
        raise ConfigError(
            f"distill.teacher: {path} is a {kind} model but task.type is {task_type}; "
            f"set -o task.type={kind}"
        )
    return teacher


def _export_checkpoint(path: str, where: Path, export_to: Path) -> Teacher:
    from e2ekit.core.config import load_config
    from e2ekit.core.engine.checkpoint import load_checkpoint, model_state
    from e2ekit.core.infer import load_deploy
    from e2ekit.core.state_fit import load_state_strict
    from e2ekit.text.task import TextTask

    ckpt = _checkpoint_of(where)
    run_dir = where if where.is_dir() else where.parent
    if ckpt is None or not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"distill.teacher: {path} is neither a run folder (config.yaml + best.pt or "
            "last.pt), a checkpoint in one, nor an export folder (deploy.yaml)"
        )
    cfg = load_config(run_dir / "config.yaml", TextConfig, [])
    task = TextTask(cfg)
    model = task.build_model()
    load_state_strict(model, model_state(load_checkpoint(ckpt)), f"distill.teacher {ckpt}")
    model.eval()
    task.export_spec(model).export(export_to, opset=cfg.export.opset, atol=cfg.export.atol)
    return Teacher(export_to, load_deploy(export_to), cfg, model)
