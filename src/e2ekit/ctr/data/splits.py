"""From config to batches: resolve a split's paths (built-in data included) and stream it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from e2ekit.core.errors import DataError
from e2ekit.ctr.config import CtrConfig
from e2ekit.ctr.data.builtin import resolve_split
from e2ekit.ctr.data.cache import CachedReader, cached_reader
from e2ekit.ctr.data.criteo import CriteoReader, list_files
from e2ekit.ctr.data.formats import CriteoCSVReader, open_reader
from e2ekit.ctr.data.loader import BatchStream
from e2ekit.ctr.features import add_crosses, layout_of, schema_of


def split_paths(cfg: CtrConfig, split: str) -> str | None:
    """``data.<split>`` with ``builtin:*`` resolved to generated files; None when unset."""
    value = getattr(cfg.data, split, None)
    if not value:
        return None
    return resolve_split(value, cfg.data.builtin.model_dump())


def open_schema_reader(
    cfg: CtrConfig, paths: str | list[str], *, format: str | None = None, **kw: Any
) -> CriteoReader:
    """The reader ``data.schema`` calls for (Criteo columns: the ``data.format`` reader, or
    ``format`` when given), with the schema's crosses appended to every chunk."""
    schema, layout = schema_of(cfg), layout_of(cfg)
    kw.setdefault("max_bad_rows", cfg.data.max_bad_rows)
    reader: CriteoReader
    if schema.custom:
        from e2ekit.ctr.data.delimited import DelimitedReader

        reader = DelimitedReader(paths, schema=schema, layout=layout, **kw)
    else:
        fmt = format or cfg.data.format
        reader = open_reader(paths, format=fmt, hash_size=cfg.model.hash_size, **kw)
    if schema.crosses:
        reader.add_slots = partial(add_crosses, schema=schema, layout=layout)
    return reader


def make_stream(
    cfg: CtrConfig,
    paths: str | list[str],
    *,
    train: bool,
    epoch: int = 0,
    shard: tuple[int, int] | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
) -> BatchStream:
    """Batches of ``paths`` as the config says (format, hashing, bad-row policy, shuffling).

    ``drop_last``: DDP ranks exchange equal-sized gradients, so they drop a short last batch.
    With ``data.cache`` the batches come from the files' parsed copies (parsed here first
    where missing; the trainer parses them before training starts).
    """
    reader: CriteoReader | CachedReader
    reader = cached_reader(cfg, paths) if cfg.data.cache else open_schema_reader(cfg, paths)
    batch_shard = shard
    if shard is not None and shard[1] > 1 and not isinstance(reader, CriteoCSVReader):
        # line readers split every file into byte ranges, parsed copies into row ranges:
        # each process reads only its part
        reader.shard = shard
        batch_shard = None
    size = batch_size or (
        cfg.train.batch_size if train else (cfg.train.eval_batch_size or cfg.train.batch_size)
    )
    stream = BatchStream(
        reader,
        batch_size=size,
        shuffle_buffer=cfg.data.shuffle_buffer if train and cfg.train.shuffle else 0,
        seed=cfg.seed,
        prefetch=cfg.data.prefetch,
        drop_last=drop_last,
        shard=batch_shard,
    )
    stream.set_epoch(epoch)
    return stream


def estimate_rows(paths: str | list[str]) -> int | None:
    """Rows in ``paths`` estimated from bytes and the first MiB (for progress bars only)."""
    items = [paths] if isinstance(paths, str) else paths
    try:
        files = [f for item in items for f in list_files(item)]
    except DataError:
        return None
    total = sum(f.stat().st_size for f in files)
    if not files or total == 0:
        return None
    with open(files[0], "rb") as fh:
        head = fh.read(1 << 20)
    lines = head.count(b"\n")
    if lines == 0:
        return None
    return max(1, round(total / (len(head) / lines)))


def describe(paths: str | list[str]) -> str:
    items = [paths] if isinstance(paths, str) else paths
    return ", ".join(str(Path(p)) for p in items)
