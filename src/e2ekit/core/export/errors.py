"""The one error an export raises when its result cannot be trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """Export produced a model that cannot be trusted (parity failure, dropped input...).

    ``report`` is the report dict and ``artifacts_dir`` the folder holding the failed files
    (``None`` when nothing was kept).
    """

    def __init__(
        self,
        message: str,
        *,
        report: dict[str, Any] | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.report = report
        self.artifacts_dir = artifacts_dir
