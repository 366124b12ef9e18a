"""The error an :class:`~e2ekit.text.encoding.Encoder` option raises when it cannot be used."""

from __future__ import annotations

from e2ekit.core.errors import ConfigError

__all__ = ["EncoderOptionError"]


class EncoderOptionError(ConfigError, ValueError):
    """A bad or unsupported option value: a ConfigError for the CLI and server (one line,
    non-zero exit), and a ValueError for library callers."""
