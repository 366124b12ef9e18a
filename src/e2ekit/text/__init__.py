"""Text kit: fine-tune BERT/ERNIE-family encoders (cls, pair, ner, mrc)."""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncClient", "Client", "Encoder"]


def __getattr__(name: str) -> Any:
    """``Encoder`` and the clients are imported on first use, so importing the kit stays
    cheap."""
    if name == "Encoder":
        from e2ekit.text.encoding import Encoder

        return Encoder
    if name in ("Client", "AsyncClient"):
        from e2ekit.text import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
