"""What a kit plugs into the CLI: its config schema, tasks, verbs, predict and serve adapters.

Kits are imported lazily by name so ``e2ekit seg ...`` never pays for importing
transformers, and an unknown kit fails fast with a suggestion. The core names no kit's
own verb: each kit lists its verbs in ``Kit.verbs()``.
"""

from __future__ import annotations

import importlib
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

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
PUBLIC_KITS = ("text", "seg", "det", "ctr")

C = TypeVar("C", bound=RunConfig)
Handler = Callable[[Any, Namespace], dict[str, Any]]
AddArguments = Callable[[ArgumentParser], None]


@dataclass(frozen=True)
class Verb:
    """One ``e2ekit <kit> <verb>``: what runs, its help line and its own flags.

    ``handler(kit, args)`` returns the summary printed as the last JSON line. Every verb
    also takes ``-c``, ``-o`` and ``--out`` (``out_help`` says what ``--out`` is for it).
    """

    handler: Handler
    help: str
    add_arguments: AddArguments | None = None
    out_help: str = "output folder"

    def extend(
        self, handler: Handler | None = None, add_arguments: AddArguments | None = None
    ) -> Verb:
        """This verb run by ``handler`` and/or with ``add_arguments``' flags after its own:
        how a kit adapts a shared verb without restating the shared flags."""
        flags = self.add_arguments
        if add_arguments is not None:
            flags = _chain(self.add_arguments, add_arguments)
        return replace(self, handler=handler or self.handler, add_arguments=flags)


def _chain(first: AddArguments | None, then: AddArguments) -> AddArguments:
    def both(parser: ArgumentParser) -> None:
        if first is not None:
            first(parser)
        then(parser)

    return both


class Kit(Generic[C]):
    """Base class; each kit module defines one instance named ``KIT``, typed by its config."""

    name: ClassVar[str] = ""
    schema: type[C]
    description: ClassVar[str] = ""

    def verbs(self) -> dict[str, Verb]:
        """Every verb of ``e2ekit <name>``, in help order. The default is the shared verbs; a
        kit returns them plus its own, or a shared one ``extend``-ed with its handler or flags."""
        from e2ekit.core.shared_verbs import shared_verbs

        return shared_verbs()

    def make_task(self, cfg: C) -> Task:
        raise NotImplementedError

    def endpoints(self, predictor: Any) -> list[Endpoint]:
        """Serving routes for an exported model (built from ``predictor.deploy`` alone)."""
        raise NotImplementedError

    def predict(
        self, predictor: Any, input_path: Path, out_dir: Path, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run ``predictor`` over a file, folder or list; write outputs; return a summary.

        ``options``: the ``predict`` flags by name (the kit's own ones included), passed in
        rather than kept on the shared kit object, so one call never leaks into the next."""
        raise NotImplementedError

    # -- demo: what `e2ekit demo` needs to run this kit end to end -------------------
    demo_config: ClassVar[str] = "quick"

    def demo_input(self, cfg: C, folder: Path) -> Path:
        """Write a small predict input (file, folder or list) into ``folder``; return it."""
        raise NotImplementedError

    def demo_request(self, deploy: dict[str, Any]) -> dict[str, Any]:
        """One valid ``POST /predict`` body for the served export."""
        raise NotImplementedError


def get_kit(name: str) -> Kit[Any]:
    if name not in KITS:
        raise E2EError(f"unknown kit '{name}'{did_you_mean(name, KITS)}; kits: {', '.join(KITS)}")
    target = KITS[name]
    if target is None:
        raise E2EError(
            f"the {name} kit is not in this build yet; available now: {', '.join(available_kits())}"
        )
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def available_kits() -> list[str]:
    return [k for k, v in KITS.items() if v]
