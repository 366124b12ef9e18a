"""Small file helpers the detection readers and converters share."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from e2ekit.core.errors import DataError

__all__ = ["atomic_write_json", "image_size"]


def image_size(path: Path, why: str) -> tuple[int, int]:
    """(width, height) from the image header only (Pillow reads no pixels for this).

    Used when an annotation lacks the size; ``why`` says which record needed it, so
    a missing image is reported against the annotation that pointed at it.
    """
    if not path.is_file():
        raise DataError(f"{why}: no image size given and the image {path} does not exist")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{why}: cannot read the size of image {path}: {exc}") from None
    return int(w), int(h)


def atomic_write_json(obj: Any, out_file: str | Path) -> Path:
    """Write JSON to a temp file beside ``out_file`` and rename it into place.

    A crash or a full disk then never leaves a truncated annotation file that a
    later run would fail on (or, worse, half-read).
    """
    out = Path(out_file).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
