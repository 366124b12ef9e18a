"""Folders built once per distinct parameters and shared by every later run and process.

Built-in datasets and derived tokenizers are generated on first use and cached (under
:func:`e2ekit.core.paths.data_cache_dir`). The folder's name carries a hash of everything that
determines its bytes, so a changed parameter or generator version gets a fresh folder. It is
built in a hidden temporary sibling and renamed into place, so a reader never sees a half-built
folder, a crash leaves nothing that looks complete, and two processes racing to build it end
up sharing the one copy that was published first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cached_folder", "cached_folder_path", "params_digest"]


def params_digest(params: Mapping[str, Any], length: int = 10) -> str:
    """Short SHA-256 of ``params`` as canonical JSON (sorted keys): equal params, equal name."""
    key = json.dumps(dict(params), sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:length]


def cached_folder_path(root: Path, name: str, params: Mapping[str, Any]) -> Path:
    """Where :func:`cached_folder` keeps the folder for ``params``: ``root/<name>-<digest>``."""
    return Path(root) / f"{name}-{params_digest(params)}"


def cached_folder(
    root: Path,
    name: str,
    params: Mapping[str, Any],
    build: Callable[[Path], object],
    *,
    marker: str = "meta.json",
) -> Path:
    """The complete folder for ``params`` under ``root``, built by ``build(folder)`` if missing.

    ``marker`` is a file ``build`` writes (last, or as part of its output) that proves the
    folder complete; a folder without it is a crashed build's leftover and is rebuilt. If
    another process publishes a complete copy while this one builds, that copy is returned
    and this one discarded. A failing ``build`` leaves nothing behind.
    """
    final = cached_folder_path(root, name, params)
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"building {final.name} wrote no {marker}: the build is incomplete")
        if final.exists() and not (final / marker).is_file():
            shutil.rmtree(final, ignore_errors=True)  # a broken copy left by a crash
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
