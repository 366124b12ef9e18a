"""CTR data: a streaming Criteo TSV reader and a synthetic Criteo generator with known truth."""

from __future__ import annotations

from e2ekit.ctr.data.criteo import CriteoReader, ReaderStats, list_files
from e2ekit.ctr.data.synthetic import auc, bayes_auc, write_synthetic_criteo

__all__ = [
    "CriteoReader",
    "ReaderStats",
    "auc",
    "bayes_auc",
    "list_files",
    "write_synthetic_criteo",
]
