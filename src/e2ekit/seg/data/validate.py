"""Label validation before training: one pass over every label file, one clear error.

Wrong label values are the most common reason a segmentation run "trains" to
garbage or dies deep inside the loss with a CUDA assert: a class id >= the number
of classes, or a 0/255 binary mask whose 255 foreground is silently ignored. This
pass reads each label once (threads overlap the PNG decoding), counts its values
with ``np.bincount`` and fails with a single one-line ``DataError`` naming the
first offending file, the bad values, how many files are affected and the fix.
The pixel counts it returns are the class frequencies needed for class weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.core.imageio import read_label
from e2ekit.core.progress import progress as progress_bar

__all__ = ["count_values", "validate_labels"]

log = logging.getLogger("e2ekit")

_CHUNK = 64  # files decoded concurrently before their counts are merged


def count_values(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a label map and their pixel counts (int64 arrays)."""
    flat = label.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat, minlength=256)
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    values, counts = np.unique(flat, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _loader(
    dataset: Any,
) -> tuple[int, Callable[[int], np.ndarray | None], Callable[[int], str]]:
    """(count, load(i) -> mapped label or None, name(i)) for our datasets or any other."""
    samples = getattr(dataset, "samples", None)
    display = getattr(dataset, "display_path", str)

    def name(i: int) -> str:
        if samples is not None and samples[i][1] is not None:
            return display(samples[i][1])
        return f"sample {i}"

    if hasattr(dataset, "load_label"):
        return len(dataset), dataset.load_label, name
    if samples is not None:

        def load(i: int) -> np.ndarray | None:
            path = samples[i][1]
            return None if path is None else read_label(Path(path))

        return len(samples), load, name

    def load_item(i: int) -> np.ndarray | None:  # any dataset returning {"label": tensor}
        label = dataset[i]["label"]
        return np.asarray(label.numpy() if hasattr(label, "numpy") else label)

    return len(dataset), load_item, name


def _pick(n: int, max_files: int | None) -> list[int]:
    """All indices, or ``max_files`` evenly spread ones (deterministic, covers the set)."""
    if max_files is None or max_files >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, num=max(1, max_files)).round().astype(int).tolist()))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _join(values: list[int], limit: int = 8) -> str:
    text = ", ".join(map(str, values[:limit]))
    return text + (f", ... ({len(values)} values)" if len(values) > limit else "")


def validate_labels(
    dataset: Any,
    num_classes: int,
    ignore_index: int = 255,
    binary_255_to_1: bool = False,
    max_files: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Check every label of ``dataset`` holds only 0..num_classes-1 or ``ignore_index``.

    Labels are read after the dataset's own ``label_map``/``binary_255_to_1``;
    ``binary_255_to_1=True`` here also maps 255 -> 1 when the dataset does not.
    Returns ``num_files``, ``num_pixels``, ``class_pixels`` (per class),
    ``class_share``, ``ignore_pixels``, ``ignore_share``, ``absent_classes`` and
    ``unlabelled_files``; raises one ``DataError`` for the whole set otherwise.
    """
    num_classes = int(num_classes)
    extra_binary = binary_255_to_1 and not getattr(dataset, "binary_255_to_1", False)
    total, load, name = _loader(dataset)
    indices = _pick(total, max_files)

    seen: dict[int, int] = {}  # value -> pixels over all files
    bad_files: list[tuple[int, list[int]]] = []  # (index, bad values) in file order
    files_with_255: list[int] = []
    unlabelled = 0
    checked = 0

    def work(i: int) -> tuple[np.ndarray, np.ndarray] | None:
        label = load(i)
        return None if label is None else count_values(np.asarray(label))

    workers = max(1, min(4, os.cpu_count() or 1))
    bar = progress_bar(total=len(indices), desc="checking labels", unit="file", enabled=progress)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk in _chunks(indices, _CHUNK):
                for i, result in zip(chunk, pool.map(work, chunk), strict=True):
                    bar.update(1)
                    if result is None:
                        unlabelled += 1
                        continue
                    checked += 1
                    values, counts = result
                    if extra_binary and 255 in values:  # 255 -> 1 on the counts, not pixels
                        merged: dict[int, int] = {}
                        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                            key = 1 if v == 255 else v
                            merged[key] = merged.get(key, 0) + c
                        values = np.array(sorted(merged), np.int64)
                        counts = np.array([merged[v] for v in values.tolist()], np.int64)
                    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                        seen[v] = seen.get(v, 0) + c
                    vals = values.tolist()
                    bad = [v for v in vals if (v < 0 or v >= num_classes) and v != ignore_index]
                    if bad:
                        bad_files.append((i, bad))
                    if 255 in vals:
                        files_with_255.append(i)
    finally:
        bar.close()

    binary_like = bool(seen) and 255 in seen and set(seen) <= {0, 255}
    binary_hint = "looks like a 0/255 binary mask: set data.binary_255_to_1: true" + (
        "" if num_classes == 2 else " and data.num_classes: 2"
    )
    if bad_files:
        first, first_bad = bad_files[0]
        all_bad = sorted({v for _, b in bad_files for v in b})
        more = f" (and {len(bad_files) - 1} more files)" if len(bad_files) > 1 else ""
        word = "label" if len(first_bad) == 1 else "labels"
        if binary_like:
            fix = binary_hint
        elif all_bad[0] < 0:
            fix = "fix the labels or remap them with data.label_map"
        else:
            fix = (
                f"set data.num_classes >= {all_bad[-1] + 1} or fix the labels "
                f"(or remap them to {ignore_index} with data.label_map)"
            )
        others = f"; all bad values: {_join(all_bad)}" if all_bad != first_bad else ""
        raise DataError(
            f"{word} {_join(first_bad)} with num_classes {num_classes} in {name(first)}"
            f"{more}{others}: {fix}"
        )
    if binary_like and ignore_index == 255 and num_classes == 2:
        first = files_with_255[0]
        more = f" (and {len(files_with_255) - 1} more files)" if len(files_with_255) > 1 else ""
        raise DataError(
            f"labels are only 0 and 255 in {name(first)}{more}, so every foreground pixel "
            f"would be ignored (ignore_index 255): {binary_hint}"
        )

    class_pixels = [int(seen.get(c, 0)) for c in range(num_classes)]
    ignore_pixels = int(seen.get(ignore_index, 0))
    num_pixels = sum(class_pixels) + ignore_pixels
    labelled = max(1, num_pixels - ignore_pixels)
    absent = [c for c, n in enumerate(class_pixels) if n == 0]
    if checked and absent:
        log.warning("classes %s never appear in %d checked label files", _join(absent, 12), checked)
    return {
        "num_files": checked,
        "unlabelled_files": unlabelled,
        "num_pixels": num_pixels,
        "class_pixels": class_pixels,
        "class_share": [n / labelled for n in class_pixels],
        "ignore_pixels": ignore_pixels,
        "ignore_share": ignore_pixels / num_pixels if num_pixels else 0.0,
        "absent_classes": absent,
    }
