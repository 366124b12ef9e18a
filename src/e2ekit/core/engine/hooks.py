"""Hook points of the training loop, for side effects only (detectron2's HookBase)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from e2ekit.core.registry import HOOKS

if TYPE_CHECKING:
    from e2ekit.core.engine.trainer import Trainer


class Hook:
    """Override any of these; state returned by ``state_dict`` goes into checkpoints."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_eval(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def after_checkpoint(self, trainer: Trainer, path: str) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_hooks(specs: list[dict[str, Any]]) -> list[Hook]:
    """Hooks named in ``train.hooks`` (a registered name or 'pkg.mod:HookClass')."""
    hooks = []
    for spec in specs:
        hook = HOOKS.build(spec)
        if not isinstance(hook, Hook):
            raise TypeError(f"train.hooks entry {spec['type']!r} did not build a Hook")
        hooks.append(hook)
    return hooks
