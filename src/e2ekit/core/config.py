"""YAML configs with one ``_base_`` level, ``-o key=value`` overrides and strict schemas.

Dicts merge and lists replace (PaddleSeg/detectron2 semantics). Every key remembers
the file (or ``-o`` flag) it came from, so a validation error can say where to look
and which valid key was probably meant, before any work starts.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from e2ekit.core.errors import ConfigError, did_you_mean
from e2ekit.core.fileio import atomic_write
from e2ekit.core.textio import read_utf8

C = TypeVar("C", bound=BaseModel)
BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
OVERRIDE_SOURCE = "-o"


class Provenance(dict):
    """Dotted key -> where it was set (a file path or ``-o key=value``)."""

    def source(self, dotted: str) -> str:
        """The most specific recorded source for ``dotted`` or one of its parents."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            hit = self.get(".".join(parts[:i]))
            if hit:
                return hit
        return self.get("", "the config")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (``amp: off`` stays a string) and
    ``1e-3`` is a float, as users expect from ``-o optim.lr=1e-3``."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool",)]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@functools.lru_cache(maxsize=512)
def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def yaml_load(text: str) -> Any:
    """Parse YAML text (safe loader, YAML 1.2 scalars). Parsed trees are cached by content
    (a pure-Python parse costs milliseconds; configs and ``-o`` values repeat within a
    process) and handed out as copies, so callers may change them."""
    return copy.deepcopy(_parse_yaml(text))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(read_utf8(path, ConfigError))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def _record(prov: Provenance, tree: dict[str, Any], source: str, prefix: str = "") -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        prov[dotted] = source
        if isinstance(value, dict):
            _record(prov, value, source, dotted + ".")


def _without_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_delete(v) for k, v in value.items() if k != DELETE_KEY}
    return copy.deepcopy(value)


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``child`` into a copy of ``base``: dicts merge, anything else replaces.

    A child mapping with ``_delete_: true`` replaces the base's mapping instead of merging
    into it (as in mmdetection's configs), e.g. a ``model:`` section whose keys belong to
    another architecture than the base's.
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and value.get(DELETE_KEY) is True:
            out[key] = _without_delete(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = _without_delete(value)
    return out


def load_yaml_tree(
    path: str | Path, _seen: tuple[Path, ...] = (), kit: str | None = None
) -> tuple[dict, Provenance]:
    """Read a config and its ``_base_`` files into one dict plus key provenance.

    A ``_base_`` entry is a file beside the config (``base.yaml``, or ``base`` without the
    suffix), else a shipped config by name: ``det/quick`` anywhere, ``quick`` for ``kit``'s.
    """
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: _base_ cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    merged: dict[str, Any] = {}
    prov = Provenance()
    if bases is not None:
        for base in [bases] if isinstance(bases, str) else list(bases):
            if not isinstance(base, str):
                raise ConfigError(f"{path}: _base_ must be a file name or a list of them")
            base_path = _find_base(path, base, kit)
            base_tree, base_prov = load_yaml_tree(base_path, (*_seen, path), kit)
            merged = merge(merged, base_tree)
            prov.update(base_prov)
    _record(prov, data, str(path))
    return merge(merged, data), prov


def _find_base(path: Path, base: str, kit: str | None) -> Path:
    """Where ``_base_: base`` of the config ``path`` lives (see :func:`load_yaml_tree`)."""
    from e2ekit.core.paths import configs_root, shipped_configs

    tried = [(path.parent / base).resolve()]
    if not base.endswith((".yaml", ".yml")):
        tried.append((path.parent / f"{base}.yaml").resolve())
        root = configs_root()
        if "/" in base:
            tried.append(root / f"{base}.yaml")
        elif kit:
            tried.append(root / kit / f"{base}.yaml")
    for candidate in tried:
        if candidate.is_file():
            return candidate
    hint = ""
    if kit and "/" not in base:
        names = [p.stem for p in shipped_configs(kit).get(kit, [])]
        hint = f"; shipped {kit} configs: {', '.join(names)}" if names else ""
    looked = ", ".join(str(t) for t in tried)
    raise ConfigError(f"{path}: _base_ file '{base}' not found (looked at {looked}){hint}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=1e-3`` -> (['a', 'b'], 0.001); the value is typed as YAML would type it."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' must look like key.subkey=value")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], prov: Provenance, overrides: list[str]) -> dict:
    """Apply ``-o`` overrides in order; each creates missing parents."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}  # made by this override: blame it for the section
                prov.setdefault(".".join(parts[: i + 1]), f"{OVERRIDE_SOURCE} {text}")
            elif not isinstance(child, dict):
                parent = ".".join(parts[: i + 1])
                raise ConfigError(f"override '{text}': '{parent}' is a value, not a section")
            node = child
        node[parts[-1]] = value
        src = f"{OVERRIDE_SOURCE} {text}"
        prov[".".join(parts)] = src
        if isinstance(value, dict):
            _record(prov, value, src, ".".join(parts) + ".")
    return tree


def _unwrap(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``Optional[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType", Union)):
        for arg in get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
    return None


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the (sub)model that contains ``loc``'s last part."""
    model: type[BaseModel] | None = schema
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _unwrap(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _format_error(err: dict[str, Any], schema: type[BaseModel], prov: Provenance) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    dotted = ".".join(str(p) for p in loc)
    source = prov.source(dotted)
    kind = err["type"]
    if not loc and kind == "value_error":  # a whole-config check: "key.path: why"
        msg = str(err["msg"]).removeprefix("Value error, ")
        key, sep, _ = msg.partition(": ")
        where = prov.source(key) if sep and " " not in key else source
        return f"{where}: {msg}"
    if kind == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _fields_at(schema, loc))
        prefix = ".".join(str(p) for p in loc[:-1])
        fields = _fields_at(schema, loc)
        if hint and prefix:
            hint = hint.replace("'", f"'{prefix}.", 1)
        valid = f"; valid keys here: {', '.join(fields)}" if fields and not hint else ""
        return f"{source}: unknown key '{dotted}'{hint}{valid}"
    if kind == "missing":
        return f"{source}: missing required key '{dotted}'"
    value = err.get("input")
    if kind == "value_error" and isinstance(value, dict | list):  # a section's own check
        msg = str(err["msg"]).removeprefix("Value error, ")
        return f"{_blame(msg, prov, source)}: {msg}"  # the section itself is not the news
    msg = err["msg"]  # pydantic's "Input should be ...": lowercase its first letter only
    msg = msg[:1].lower() + msg[1:]
    return f"{source}: key '{dotted}' {msg} (got {value!r})"


def _blame(msg: str, prov: Provenance, fallback: str) -> str:
    """Where the keys a check's message names were set: an ``-o`` override among them first
    (the likeliest news to the user), else the first key's file, else ``fallback``."""
    sources = [prov[k] for k in re.findall(r"[A-Za-z_][\w.]*\.[\w.]*\w", msg) if k in prov]
    overrides = [src for src in sources if src.startswith(OVERRIDE_SOURCE)]
    return (overrides or sources or [fallback])[0]


def validate(tree: dict[str, Any], schema: type[C], prov: Provenance | None = None) -> C:
    """Check ``tree`` against ``schema``; the first problem becomes a one-line ConfigError."""
    prov = prov or Provenance()
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0], schema, prov)
        more = f" (+{len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


def load_config(
    path: str | Path | None,
    schema: type[C],
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    kit: str | None = None,
) -> C:
    """Read, merge, override and validate a config; nothing touches the disk but reads.
    ``kit``: whose shipped configs a bare ``_base_`` name may refer to."""
    tree: dict[str, Any] = copy.deepcopy(defaults or {})
    prov = Provenance()
    if path is not None:
        file_tree, prov = load_yaml_tree(path, kit=kit)
        tree = merge(tree, file_tree)
        prov[""] = str(Path(path).resolve())
    tree = apply_overrides(tree, prov, overrides or [])
    return validate(tree, schema, prov)


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain JSON-able dict of a validated config (for checkpoints and run folders)."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: BaseModel | dict[str, Any]) -> str:
    data = to_dict(cfg) if isinstance(cfg, BaseModel) else cfg
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def save_config(cfg: BaseModel | dict[str, Any], path: str | Path) -> None:
    """Write the fully resolved config (atomically) so a run can be reproduced."""
    atomic_write(path, dump_yaml(cfg))
