"""Progress bars with rate and ETA (tqdm), silent on non-main ranks and when disabled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bars_enabled(enabled: bool = True) -> bool:
    if not enabled or os.environ.get("E2EKIT_NO_PROGRESS") == "1":
        return False
    return int(os.environ.get("RANK", "0")) == 0


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar (``{rate} {eta}`` shown) that writes to stderr and never breaks logs."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not bars_enabled(enabled),
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
        mininterval=0.5,
        **kwargs,
    )
