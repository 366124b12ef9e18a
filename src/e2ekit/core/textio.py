"""Reading a text file as UTF-8, or failing with one line that names the file and line.

Python's own ``UnicodeDecodeError`` names neither the file nor the line, so a config or data
file saved in another encoding (Latin-1, GBK, UTF-16) would otherwise surface as a traceback.
"""

from __future__ import annotations

from pathlib import Path

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
