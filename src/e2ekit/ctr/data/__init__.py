"""CTR data: streaming Criteo TSV/CSV/slot readers, torch batch streams, synthetic data."""

from __future__ import annotations

from e2ekit.ctr.data.criteo import CriteoReader, ReaderStats, list_files
from e2ekit.ctr.data.formats import CriteoCSVReader, SlotReader, open_reader, sniff_format
from e2ekit.ctr.data.loader import BatchStream, shard_files
from e2ekit.ctr.data.synthetic import auc, bayes_auc, write_synthetic_criteo

__all__ = [
    "BatchStream",
    "CriteoCSVReader",
    "CriteoReader",
    "ReaderStats",
    "SlotReader",
    "auc",
    "bayes_auc",
    "list_files",
    "open_reader",
    "shard_files",
    "sniff_format",
    "write_synthetic_criteo",
]
