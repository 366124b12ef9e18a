"""``builtin:train`` / ``builtin:val`` / ``builtin:test``: generated Criteo data, cached once.

The three splits are independent draws from ONE hidden click model (the generator's seed),
so validation AUC can be compared with the Bayes-optimal AUC the generator knows
(``bayes_auc`` in each split's folder). Built once and published whole
(:func:`e2ekit.core.cache.cached_folder`): a reader never sees half-written data and racing
processes share one copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2ekit.core.cache import cached_folder, cached_folder_path
from e2ekit.core.errors import ConfigError
from e2ekit.core.logs import log
from e2ekit.core.paths import data_cache_dir
from e2ekit.ctr.data.synthetic import bayes_auc, write_synthetic_criteo

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
PREFIX = "builtin:"


def builtin_criteo(params: dict[str, Any]) -> Path:
    """The cached folder holding ``train/``, ``val/``, ``test/`` for these generator params."""
    full = {k: params[k] for k in ("train_rows", "val_rows", "test_rows", "seed", "ctr")}
    key = {**full, "generator_version": GENERATOR_VERSION}
    root = data_cache_dir()
    final = cached_folder_path(root, "criteo", key)  # named in the log line only

    def build(folder: Path) -> None:
        total = full["train_rows"] + full["val_rows"] + full["test_rows"]
        log.info("generating built-in Criteo data (%d rows) into %s", total, final)
        meta: dict[str, Any] = {"params": full}
        for sample, split in enumerate(SPLITS):
            out = write_synthetic_criteo(
                folder / split,
                rows=int(full[f"{split}_rows"]),
                seed=int(full["seed"]),
                ctr=float(full["ctr"]),
                sample=sample,
            )
            meta[split] = {"ctr": out.ctr, "bayes_auc": bayes_auc(folder / split)}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    return cached_folder(root, "criteo", key, build)


def resolve_split(value: str, params: dict[str, Any]) -> str:
    """``builtin:<split>`` -> that split's data file; anything else unchanged."""
    if not value.startswith(PREFIX):
        return value
    split = value[len(PREFIX) :]
    if split not in SPLITS:
        raise ConfigError(f"unknown built-in split '{value}'; use one of builtin:{SPLITS}")
    return str(builtin_criteo(params) / split / "part-0.tsv")


def builtin_meta(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads((builtin_criteo(params) / "meta.json").read_text())
