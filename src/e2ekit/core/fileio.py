"""Atomic file output: every file a command writes appears whole or not at all.

Why one place: a kill, a full disk or a bad row half-way through a write must never leave a
truncated ``metrics.json``, annotation file or predictions file that a later step half-reads.
All writers go through a temp file in the same folder, ``fsync`` and ``os.replace``; a whole
folder is staged beside its target and swapped in by :func:`replace_folder`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write",
    "atomic_write_json",
    "replace_folder",
    "staged_outputs",
]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``, on an error it
    is removed and ``path`` is left as it was. ``mode`` is ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = True
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    ``allow_nan=False`` refuses NaN/inf (``ValueError``, ``path`` untouched): they are not
    JSON, and strict readers (browsers, ``jq``) reject a file holding them.
    """
    separators = None if indent is not None else (",", ":")
    text = json.dumps(
        obj, indent=indent, ensure_ascii=False, separators=separators, allow_nan=allow_nan
    )
    return atomic_write(path, text + "\n")


def replace_folder(staged: str | Path, target: str | Path) -> Path:
    """Swap the complete folder ``staged`` in as ``target`` (same file system).

    A missing ``target`` appears whole in one rename. An existing one is first renamed aside
    and removed only once ``staged`` is in place, so ``target`` is never half old, half new,
    and a failed swap puts the old folder back.
    """
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.replace(staged, target)
        return target
    if not target.is_dir():
        raise NotADirectoryError(f"{str(target)!r} exists and is not a folder")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old / target.name, target)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def staged_outputs(target: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` for a command to write all its outputs into.

    On success the outputs move into ``target`` (made if missing, in one rename then),
    replacing same-named files and leaving other files there alone; on any failure the
    staged folder is removed, so a failed command leaves ``target`` exactly as it was,
    including folders this call had to make for it.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{str(target)!r} exists and is not a folder")
    made = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    above = target.parent.parents[len(made) - 1] if made else target.parent
    if not above.is_dir():  # a file where a folder on the way should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:  # name the output the user gave, not a hidden temp folder
        _remove_empty(made)
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None
    try:
        yield staged
        _merge_into(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders a failed command made (innermost first), each only while empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _merge_into(staged: Path, target: Path) -> None:
    """Move ``staged``'s tree into ``target``, file by file where both have a folder."""
    if not target.exists():
        os.replace(staged, target)
        return
    for entry in sorted(staged.iterdir()):
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _merge_into(entry, dest)
        elif dest.is_dir():
            raise IsADirectoryError(f"{str(dest)!r} is a folder; the output {entry.name} is not")
        else:
            os.replace(entry, dest)
            if entry.exists():  # rename(2) does nothing when both are links to one file
                entry.unlink()
    staged.rmdir()
