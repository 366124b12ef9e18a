"""Small file helpers the detection readers and converters share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from e2ekit.core import fileio
from e2ekit.core.errors import DataError

__all__ = ["atomic_write_json", "image_size", "is_file"]


def is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an OSError) for a name the OS refuses, such as one
    over 255 bytes read from a corrupt list or annotation: it is then reported missing."""
    try:
        return path.is_file()
    except OSError:
        return False


def image_size(path: Path, why: str) -> tuple[int, int]:
    """(width, height) from the image header only (Pillow reads no pixels for this).

    Used when an annotation lacks the size; ``why`` says which record needed it, so
    a missing image is reported against the annotation that pointed at it.
    """
    if not is_file(path):
        raise DataError(f"{why}: no image size given and the image {path} does not exist")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise DataError(
            f"{why}: image {path} declares more pixels than any image may have here"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{why}: cannot read the size of image {path}: {exc}") from None
    return int(w), int(h)


def atomic_write_json(obj: Any, out_file: str | Path) -> Path:
    """Compact JSON written atomically (:func:`e2ekit.core.fileio.atomic_write_json`).

    The detection converters' argument order (object first); a crash or a full disk then
    never leaves a truncated annotation file that a later run would fail on (or half-read).
    """
    return fileio.atomic_write_json(Path(out_file).expanduser(), obj, indent=None)
