"""The ``tiny`` student: the teacher's own architecture with fewer layers, started from its
embeddings, evenly spaced layers and head (the recipe of DistilBERT and ERNIE Tiny), so it
keeps the teacher's tokenizer and exports and serves like any fine-tuned text model."""

from __future__ import annotations

import copy

from torch import nn

from e2ekit.core.errors import ConfigError
from e2ekit.text.config import TextConfig


def kept_layers(total: int, keep: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one: 6 -> 2 keeps [2, 5]."""
    if not 1 <= keep <= total:
        raise ConfigError(
            f"distill.student.tiny_layers={keep}: the teacher has {total} encoder layers; "
            f"keep between 1 and {total}"
        )
    step = total / keep
    return [round(step * (i + 1)) - 1 for i in range(keep)]


def tiny_config(teacher_cfg: TextConfig, layers: int) -> TextConfig:
    """The teacher's config with ``layers`` encoder layers (what the tiny export records)."""
    model = teacher_cfg.model.model_copy(
        update={
            "from_scratch": {**(teacher_cfg.model.from_scratch or {}), "num_hidden_layers": layers}
        }
    )
    return teacher_cfg.model_copy(update={"model": model})


def tiny_from_teacher(
    teacher: nn.Module, teacher_cfg: TextConfig, layers: int
) -> tuple[nn.Module, TextConfig]:
    """A ``layers``-deep copy of the teacher: embeddings, kept layers and head copied."""
    from e2ekit.text.task import TextTask

    total = int(teacher.encoder.config.num_hidden_layers)
    picks = kept_layers(total, layers)
    cfg = tiny_config(teacher_cfg, layers)
    student = TextTask(cfg).build_model()
    student.encoder.embeddings.load_state_dict(teacher.encoder.embeddings.state_dict())
    for dst, src in enumerate(picks):
        student.encoder.encoder.layer[dst].load_state_dict(
            copy.deepcopy(teacher.encoder.encoder.layer[src].state_dict())
        )
    student.head.load_state_dict(teacher.head.state_dict())
    return student, cfg
