"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class E2EError(Exception):
    """An error caused by the user's input (config, data, flags), not by a bug."""


class ConfigError(E2EError):
    """A config file, key or value is wrong; the message names the file and key."""


class DataError(E2EError):
    """A data file or record is malformed; the message names the file and line."""


class CheckpointError(E2EError):
    """A checkpoint is missing, unsafe or does not match the model."""


class ServiceUnavailable(E2EError):
    """A service the model depends on (a key-value store) cannot be reached right now; a
    server answers 503 with Retry-After, since the request may succeed later."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The most similar valid choice, for 'did you mean' hints."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A hint suffix (' (did you mean 'x'?)') or an empty string."""
    hit = closest(name, choices)
    return f" (did you mean '{hit}'?)" if hit else ""
