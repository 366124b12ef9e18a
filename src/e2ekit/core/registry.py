"""Component registries: one small registry per kind, raising on duplicates.

Configs name a registered builder by short name (``type: unet``) or a dotted path
to user code (``type: mypkg.models:MyNet``), so nothing depends on import order.
Each kit keeps its own registries (``e2ekit/<kit>/registry.py``), so two kits may use the
same name; core keeps only what the engine itself builds (:data:`HOOKS`).
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import types
import typing
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
    """Name -> builder map for one component kind (models, losses, datasets, ...).

    ``kind`` is also the config section named in argument errors (``model.width``);
    ``kit`` prefixes it in messages, so a user of several kits sees which registry answered
    ("unknown seg model 'x'; registered: ...").
    """

    def __init__(self, kind: str, kit: str = "") -> None:
        self.section = kind
        self.kind = f"{kit} {kind}" if kit else kind
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
        clash = sorted(set(spec) & set(extra))
        if clash:  # e.g. model.num_classes while the kit passes the data's class count
            where = f"{self.section}.{clash[0]}" if self.section else clash[0]
            raise ConfigError(
                f"config key '{where}': the kit sets {clash[0]} of {self.kind} '{name}' "
                f"itself (from its data or task config); remove '{where}' and set it there"
            )
        check_kwargs(fn, spec, f"{self.kind} '{name}'", skip=len(args), section=self.section)
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
    hints = _type_hints(fn)
    for key, value in kwargs.items():
        wanted = _plain_type(hints.get(key))
        if wanted is not None and not _is_a(value, wanted):
            where = f"config key '{section}.{key}': " if section else ""
            raise ConfigError(
                f"{where}{what} argument '{key}' must be {wanted[0]}, got {value!r}"
                + (" (true or false)" if wanted[0] == "a boolean" else "")
            )


# annotation -> (what to call it, accepts); only plain scalar annotations are checked, so a
# typo'd value (``keep_ratio: flase``) fails like an unknown key instead of being truthy
_PLAIN: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    bool: ("a boolean", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return {}


def _plain_type(hint: Any) -> tuple[str, Callable[[Any], bool], bool] | None:
    """(name, check, None allowed) for ``bool``, ``int``, ``float``, ``str`` and their
    ``| None`` forms; None for anything richer (unions, sequences), which stays unchecked."""
    args = typing.get_args(hint)
    optional = False
    if args and type(None) in args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        hint, optional = rest[0], True
    plain = _PLAIN.get(hint) if isinstance(hint, type) else None
    return (*plain, optional) if plain else None


def _is_a(value: Any, wanted: tuple[str, Callable[[Any], bool], bool]) -> bool:
    return (value is None and wanted[2]) or wanted[1](value)


#: Engine hooks: the one component kind core builds itself (kits keep theirs per kit).
HOOKS: Registry[Any] = Registry("hook")
