"""What a kit plugs into the CLI: its config schema, tasks, predict and serve adapters.

Kits are imported lazily by name so ``e2ekit seg ...`` never pays for importing
transformers, and an unknown kit fails fast with a suggestion.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from e2ekit.core.engine.task import Task
from e2ekit.core.errors import E2EError, did_you_mean
from e2ekit.core.schema import RunConfig

if TYPE_CHECKING:
    from e2ekit.core.serve import Endpoint

# kit name -> "module:attribute" of its Kit instance; None = announced, not built yet.
KITS: dict[str, str | None] = {
    "text": "e2ekit.text.kit:KIT",
    "seg": "e2ekit.seg.kit:KIT",
    "det": "e2ekit.det.kit:KIT",
    "ctr": "e2ekit.ctr.kit:KIT",
    "toy": "e2ekit.toy.kit:KIT",
}
PLANNED_ISSUE = {"text": 4, "seg": 3, "det": 6, "ctr": 5}
PUBLIC_KITS = ("text", "seg", "det", "ctr")


class Kit:
    """Base class; each kit module defines one instance named ``KIT``."""

    name: ClassVar[str] = ""
    schema: ClassVar[type[RunConfig]] = RunConfig
    description: ClassVar[str] = ""

    def make_task(self, cfg: RunConfig) -> Task:
        raise NotImplementedError

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        """Serving routes for an exported model (built from ``predictor.deploy`` alone)."""
        raise NotImplementedError

    def predict(self, predictor: Any, input_path: Path, out_dir: Path) -> dict[str, Any]:
        """Run ``predictor`` over a file, folder or list; write outputs; return a summary."""
        raise NotImplementedError

    # -- demo: what `e2ekit demo` needs to run this kit end to end -------------------
    demo_config: ClassVar[str] = "quick"

    def demo_input(self, cfg: RunConfig, folder: Path) -> Path:
        """Write a small predict input (file, folder or list) into ``folder``; return it."""
        raise NotImplementedError

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        """One valid ``POST /predict`` body for the served export."""
        raise NotImplementedError


def get_kit(name: str) -> Kit:
    if name not in KITS:
        raise E2EError(f"unknown kit '{name}'{did_you_mean(name, KITS)}; kits: {', '.join(KITS)}")
    target = KITS[name]
    if target is None:
        raise E2EError(
            f"the {name} kit is not in this build yet (planned in issue #{PLANNED_ISSUE[name]}); "
            f"available now: {', '.join(k for k, v in KITS.items() if v)}"
        )
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def available_kits() -> list[str]:
    return [k for k, v in KITS.items() if v]
