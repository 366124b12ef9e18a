"""Component registries: one small registry per kind, raising on duplicates.

Configs name a registered builder by short name (``type: unet``) or a dotted path
to user code (``type: mypkg.models:MyNet``), so nothing depends on import order.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from e2ekit.core.errors import ConfigError, did_you_mean

T = TypeVar("T", bound=Callable[..., Any])


def locate(path: str) -> Any:
    """Import ``package.module:attr`` (or ``package.module.attr``) and return the attribute."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"'{path}' is not a dotted path; write it as 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module '{module_name}' for '{path}': {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> builder map for one component kind (models, losses, datasets, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a builder under ``name`` (default: its ``__name__``)."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items and self._items[key] is not fn:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._items[key] = fn
            return fn

        return deco

    def get(self, name: str) -> T:
        """The builder for ``name``; a dotted path ('pkg.mod:Cls') is imported on demand."""
        if name in self._items:
            return self._items[name]
        if ":" in name or "." in name:
            return locate(name)
        raise ConfigError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
            f"registered: {', '.join(sorted(self._items)) or '(none)'}"
        )

    def build(self, spec: dict[str, Any] | str, *args: Any, **extra: Any) -> Any:
        """Call the builder named by ``spec['type']`` with the rest of ``spec`` as kwargs."""
        spec = {"type": spec} if isinstance(spec, str) else dict(spec)
        if "type" not in spec:
            raise ConfigError(f"{self.kind} spec needs a 'type' key, got {sorted(spec)}")
        name = spec.pop("type")
        fn = self.get(name)
        check_kwargs(fn, spec, f"{self.kind} '{name}'", skip=len(args), section=self.kind)
        return fn(*args, **spec, **extra)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def check_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], what: str, skip: int = 0, section: str = ""
) -> None:
    """Fail early, with a hint, when a config passes a keyword the builder does not take."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in valid:
            where = f"config key '{section}.{key}': " if section else ""
            raise ConfigError(
                f"{where}{what} has no argument '{key}'{did_you_mean(key, valid)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )


MODELS: Registry[Any] = Registry("model")
BACKBONES: Registry[Any] = Registry("backbone")
LOSSES: Registry[Any] = Registry("loss")
DATASETS: Registry[Any] = Registry("dataset")
TRANSFORMS: Registry[Any] = Registry("transform")
METRICS: Registry[Any] = Registry("metric")
HOOKS: Registry[Any] = Registry("hook")


def list_models() -> list[str]:
    return MODELS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_losses() -> list[str]:
    return LOSSES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_transforms() -> list[str]:
    return TRANSFORMS.names()


def list_metrics() -> list[str]:
    return METRICS.names()


def list_hooks() -> list[str]:
    return HOOKS.names()
