"""Where shipped configs live, and how ``-c quick`` resolves to a file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from e2ekit.core.errors import ConfigError, did_you_mean


def configs_root() -> Path:
    """``$E2EKIT_CONFIGS``, else ``./configs``, else the repository's ``configs/``."""
    env = os.environ.get("E2EKIT_CONFIGS")
    if env:
        return Path(env)
    local = Path.cwd() / "configs"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[3] / "configs"


def shipped_configs(kit: str | None = None) -> dict[str, list[Path]]:
    root = configs_root()
    kits = (
        [kit]
        if kit
        else sorted(p.name for p in root.iterdir() if p.is_dir())
        if root.is_dir()
        else []
    )
    return {k: sorted((root / k).glob("*.yaml")) for k in kits if (root / k).is_dir()}


def resolve_config(kit: str, value: str | None) -> Path:
    """A path as given, or a shipped config name (``quick``, ``toy/quick``)."""
    if value is None:
        value = "quick"
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    root = configs_root()
    candidate = root / (value if "/" in value else f"{kit}/{value}")
    candidate = candidate.with_suffix(".yaml")
    if candidate.is_file():
        return candidate
    names = [p.stem for p in shipped_configs(kit).get(kit, [])]
    raise ConfigError(
        f"no config '{value}' for kit {kit}{did_you_mean(value, names)}; "
        f"shipped: {', '.join(names) or '(none)'} (or pass a path to a .yaml file)"
    )


def config_description(path: Path) -> str:
    """The first sentence of a config's header comment, shown by ``e2ekit configs``: the
    comment block read as one text (headers wrap over lines), cut after its first sentence,
    never inside it."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(t for t in lines if t)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", text, maxsplit=1)[0]


def data_cache_dir() -> Path:
    """Where generated built-in datasets are cached: ``$E2EKIT_DATA``, else
    ``~/.cache/e2ekit/data`` (one place for every kit)."""
    env = os.environ.get("E2EKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "e2ekit" / "data"
