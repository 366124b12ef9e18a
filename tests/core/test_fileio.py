"""Atomic file output (core.fileio) and cached build folders (core.cache)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from e2ekit.core.cache import cached_folder, cached_folder_path, params_digest
from e2ekit.core.fileio import atomic_open, atomic_write, atomic_write_json, replace_folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fileio


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    assert atomic_write_json(path, {"a": [1, 2], "é": "ü"}) == path
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "é": "ü"}
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert _names(path.parent) == ["out.json"]


def test_error_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["metrics.json"]


def test_nan_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": math.nan}, allow_nan=False)
    assert path.read_text() == "old" and _names(tmp_path) == ["report.json"]
    atomic_write_json(path, {"x": math.nan}, indent=None)  # allowed by default
    assert path.read_text() == '{"x":NaN}\n'


def test_atomic_open_rejects_append_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "a", "a"):
        pass


def test_replace_folder_swaps_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "export"
    first = tmp_path / "first"
    (first / "sparse").mkdir(parents=True)
    (first / "sparse" / "old.npy").write_text("old")
    replace_folder(first, target)
    assert _names(target / "sparse") == ["old.npy"]

    second = tmp_path / "second"
    second.mkdir()
    (second / "model.onnx").write_text("new")
    replace_folder(second, target)
    assert _names(target) == ["model.onnx"]  # nothing of the old folder mixed in
    assert _names(tmp_path) == ["export"]  # staged and set-aside folders are gone

    (tmp_path / "file").write_text("x")
    third = tmp_path / "third"
    third.mkdir()
    with pytest.raises(NotADirectoryError):
        replace_folder(third, tmp_path / "file")


# --------------------------------------------------------------------------- cache


def _builder(calls: list[Path], marker: str = "meta.json") -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "data.txt").write_text("rows")
        (folder / marker).write_text("{}")

    return build


def test_cached_folder_built_once_and_reused(tmp_path: Path) -> None:
    calls: list[Path] = []
    params = {"seed": 0, "size": [8, 8]}
    first = cached_folder(tmp_path, "shapes", params, _builder(calls))
    assert first == tmp_path / f"shapes-{params_digest(params)}"
    assert first == cached_folder_path(tmp_path, "shapes", {"size": [8, 8], "seed": 0})
    assert _names(first) == ["data.txt", "meta.json"]
    assert cached_folder(tmp_path, "shapes", dict(params), _builder(calls)) == first
    assert len(calls) == 1  # reused, not rebuilt
    other = cached_folder(tmp_path, "shapes", {**params, "seed": 1}, _builder(calls))
    assert other != first and len(calls) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failing_build_leaves_nothing(tmp_path: Path) -> None:
    def build(folder: Path) -> None:
        (folder / "part.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached_folder(tmp_path, "shapes", {"seed": 0}, build)
    assert _names(tmp_path) == []

    with pytest.raises(RuntimeError, match="wrote no done"):  # no completeness marker
        cached_folder(tmp_path, "shapes", {"seed": 0}, lambda f: None, marker="done")
    assert _names(tmp_path) == []


def test_crashed_copy_rebuilt_and_race_winner_kept(tmp_path: Path) -> None:
    params = {"seed": 0}
    final = cached_folder_path(tmp_path, "shapes", params)
    final.mkdir()
    (final / "half.txt").write_text("a crash left this")  # no marker: not complete
    calls: list[Path] = []
    assert cached_folder(tmp_path, "shapes", params, _builder(calls)) == final
    assert _names(final) == ["data.txt", "meta.json"] and len(calls) == 1

    won = {"seed": 1}
    winner = cached_folder_path(tmp_path, "shapes", won)

    def slow_build(folder: Path) -> None:
        # another process publishes while this one is still building
        winner.mkdir()
        (winner / "meta.json").write_text("winner")
        (folder / "meta.json").write_text("loser")

    assert cached_folder(tmp_path, "shapes", won, slow_build) == winner
    assert (winner / "meta.json").read_text() == "winner"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
