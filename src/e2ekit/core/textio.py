"""Reading a text file as UTF-8 (or JSON), or failing with one line naming the file and line.

Python's own ``UnicodeDecodeError`` names neither the file nor the line, so a config or data
file saved in another encoding (Latin-1, GBK, UTF-16) would otherwise surface as a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from e2ekit.core.errors import E2EError


def utf8_error(
    path: str | Path, raw: bytes, exc: UnicodeDecodeError, error: type[E2EError]
) -> E2EError:
    """``error`` for ``exc`` raised decoding ``raw`` (the bytes of ``path``): file:line, column."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return error(
        f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}: "
        f"{exc.reason}); re-save the file as UTF-8"
    )


def read_utf8(path: str | Path, error: type[E2EError] = E2EError) -> str:
    """The text of ``path`` (a UTF-8 BOM is dropped); undecodable bytes raise ``error``."""
    raw = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_error(path, raw, exc, error) from None


def _deep_position(text: str, limit: int = 500) -> int:
    """Where nesting first passes ``limit`` levels (brackets inside strings skipped)."""
    depth, in_string, escaped = 0, False, False
    deepest, at = -1, 0
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, i
            if depth > limit:
                return i
        elif ch in "]}":
            depth -= 1
    return at


def loads_json(text: str) -> Any:
    """``json.loads`` whose every failure is a ``json.JSONDecodeError`` with a position.

    Python's parser raises a bare ``ValueError`` for an integer of over 4300 digits and
    ``RecursionError`` for arrays nested thousands deep; neither says where, and callers
    already turn ``JSONDecodeError`` into a message naming the file and line.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, _deep_position(text)) from None
    except ValueError as exc:  # the int-string conversion limit
        m = re.search(r"\d{4301,}", text)
        raise json.JSONDecodeError(
            f"number too long ({exc.args[0].split(':')[0]})" if exc.args else "number too long",
            text,
            m.start() if m else 0,
        ) from None
