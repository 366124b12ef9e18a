"""Seeded train/val/test splits of a plain folder, for kits whose data come as list files.

Files are paired by stem (``images/a.jpg`` with ``labels/a.png``); a file without its
partner is an error that counts them and names the first few, since a silent drop would
shrink the data set unnoticed. The split shuffles the sorted pairs with a seeded NumPy
generator, so a seed always gives the same lists on every machine; each list is then
written in name order, so two splits diff cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.core.fileio import atomic_write

__all__ = [
    "IMAGE_SUFFIXES",
    "files_by_stem",
    "pair_by_stem",
    "refuse_existing_split",
    "split_counts",
    "split_items",
    "write_list_files",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _first(names: Sequence[str], n: int = 3) -> str:
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """The files directly in ``folder`` with one of ``suffixes`` (any case), by stem; two
    files with one stem (``a.jpg`` and ``a.png``) are an error, as a pair would be a guess."""
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    clashes = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in suffixes:
            continue
        if p.stem in found:
            clashes.append(f"{found[p.stem].name}/{p.name}")
        found[p.stem] = p
    if clashes:
        raise DataError(
            f"{folder}: {len(clashes)} name(s) used by two files: {_first(clashes)}; "
            "keep one file per name"
        )
    if not found:
        raise DataError(f"{folder}: no files ending in {', '.join(suffixes)}")
    return found


def pair_by_stem(
    first: dict[str, Path], second: dict[str, Path], first_name: str, second_name: str
) -> list[tuple[Path, Path]]:
    """``[(first file, second file)]`` sorted by stem; refuses any file without a partner."""
    alone_first = sorted(first[s].name for s in first.keys() - second.keys())
    alone_second = sorted(second[s].name for s in second.keys() - first.keys())
    problems = []
    if alone_first:
        problems.append(f"{len(alone_first)} {first_name} without {second_name}: ")
        problems[-1] += _first(alone_first)
    if alone_second:
        problems.append(f"{len(alone_second)} {second_name} without {first_name}: ")
        problems[-1] += _first(alone_second)
    if problems:
        raise DataError(
            "; ".join(problems) + "; add the missing files or move these out of the folder"
        )
    return [(first[s], second[s]) for s in sorted(first)]


def split_counts(total: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) sizes: ``round(total * fraction)``, at least one for a fraction
    above zero; refuses a split that would leave train empty."""
    for name, frac in (("--val", val), ("--test", test)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name} {frac}: a fraction in [0, 1)")
    if val + test >= 1.0:
        raise DataError(f"--val {val} + --test {test} leave nothing to train on; keep the sum < 1")
    n_val = max(round(total * val), 1 if val > 0 else 0)
    n_test = max(round(total * test), 1 if test > 0 else 0)
    n_train = total - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"{total} sample(s) cannot give {n_val} val and {n_test} test and still train; "
            "add data or lower --val/--test"
        )
    return n_train, n_val, n_test


def split_items(
    items: Sequence[object], val: float, test: float, seed: int
) -> dict[str, list[int]]:
    """Indices of ``items`` per split (``train``, ``val``, and ``test`` when asked for),
    shuffled with ``seed``, each sorted."""
    n_train, n_val, _ = split_counts(len(items), val, test)
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    parts = {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
    }
    if test > 0:
        parts["test"] = sorted(order[n_train + n_val :])
    return parts


def write_list_files(
    root: Path, pairs: Sequence[tuple[Path, Path]], parts: dict[str, list[int]], out: Path
) -> dict[str, int]:
    """``out/<split>.txt`` with ``first second`` lines relative to ``root``; returns the
    line count per split."""
    rel = [(a.relative_to(root).as_posix(), b.relative_to(root).as_posix()) for a, b in pairs]
    spaced = [p for pair in rel for p in pair if len(p.split()) != 1]
    if spaced:
        raise DataError(
            f"{len(spaced)} file name(s) hold whitespace, which a list line cannot: "
            f"{_first(spaced)}; rename them"
        )
    counts = {}
    for split, idx in parts.items():
        lines = [f"{rel[i][0]} {rel[i][1]}\n" for i in idx]
        atomic_write(out / f"{split}.txt", "".join(lines))
        counts[split] = len(lines)
    return counts


def refuse_existing_split(out: Path, suffix: str, overwrite: bool) -> None:
    """A split made before (``val`` or ``test`` lists in ``out``) is someone's work: replaced
    only with ``--overwrite``. A lone ``train`` list (``convert`` writes one of every image)
    is not a split and is replaced."""
    if overwrite:
        return
    made = [
        out / f"{name}{suffix}" for name in ("val", "test") if (out / f"{name}{suffix}").exists()
    ]
    if made:
        raise DataError(
            f"{made[0]} exists: {out} holds a split already; pass --overwrite to replace it, "
            "or --out another folder"
        )
