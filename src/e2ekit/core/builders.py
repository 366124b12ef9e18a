"""Which PyTorch builders an export folder may name: an allow-list, checked before any import.

``deploy.yaml``'s ``torch.builder`` tells the torch backend which function rebuilds the
module (``"package.module:function"``). An export folder can come from anyone, so importing
and calling whatever it names would run arbitrary code on the machine that loads it. The
loader therefore accepts exactly the strings listed here (compared as strings, nothing is
imported before the match): e2ekit's own builders, plus any a program registers for modules
it exports itself (code that runs in-process is trusted; a folder's contents are not).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from e2ekit.core.errors import E2EError

# Kit -> the builder its ``export_spec`` records (``torch_builder=``); deploy.yaml keeps
# writing these exact strings, so existing export folders load unchanged.
E2EKIT_TORCH_BUILDERS: dict[str, str] = {
    "det": "e2ekit.det.export:build_inference_module",
    "seg": "e2ekit.seg.task:build_inference_module",
    "text": "e2ekit.text.task:build_inference_module",
    "toy": "e2ekit.toy.task:build_inference_module",
}

_registered: set[str] = set()


class UnsafeExportError(E2EError, ValueError):
    """An export folder names code or files e2ekit will not load (an unregistered builder, a
    file outside the folder). A ``ValueError`` too, as every other malformed-export error."""


def _split(path: str) -> tuple[str, str]:
    """``"pkg.mod:attr"`` (or ``"pkg.mod.attr"``) -> ``("pkg.mod", "attr")``."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"invalid builder {path!r}; expected 'package.module:function'")
    return module_name, attr


def _import(path: str) -> Any:
    module_name, attr_path = _split(path)
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def register_torch_builder(path: str) -> None:
    """Allow export folders naming ``path`` (``"package.module:function"``) in this process.

    For programs exporting their own modules through the Python API; call it before loading
    such a folder with the torch backend. Only code can register: a folder never can.
    """
    _split(path)
    _registered.add(path)


def trust_torch_builder(path: str) -> Callable[..., Any]:
    """The builder the running program's own code names (an export's ``torch_builder``),
    registered so that this process may load the folders it exports. Never call it with a
    name read from a file."""
    builder = _import(path)
    _registered.add(path)
    return builder


def registered_torch_builders() -> list[str]:
    """Every builder an export folder may name here, sorted."""
    return sorted({*E2EKIT_TORCH_BUILDERS.values(), *_registered})


def is_registered(path: object) -> bool:
    """Whether ``path`` is exactly one of the allowed builder strings (nothing is imported)."""
    return isinstance(path, str) and (path in E2EKIT_TORCH_BUILDERS.values() or path in _registered)


def refusal(path: object, where: str) -> str:
    """Why ``path`` (read from ``where``) is not loaded: one line naming it and the allowed."""
    return (
        f"{where}: torch.builder {path!r} is not a builder registered by e2ekit, so it is "
        f"not imported (an export folder must not name code to run); known builders: "
        f"{', '.join(registered_torch_builders())}"
    )


def resolve_torch_builder(path: object, where: str) -> Callable[..., Any]:
    """The registered builder ``path`` names; anything else raises before any import."""
    if not is_registered(path):
        raise UnsafeExportError(refusal(path, where))
    assert isinstance(path, str)
    return _import(path)
