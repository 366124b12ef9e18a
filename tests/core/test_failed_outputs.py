"""A command that fails leaves no partial output: nothing it made stays, nothing that was
there before is touched (exports onto a file, predictions cut short by a bad input)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from e2ekit.core.errors import DataError
from e2ekit.core.kit import get_kit


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_onto_a_file_is_one_line_and_leaves_nothing(toy, cli, tmp_path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    code, _, err = cli("toy", "export", "--weights", toy["run"] / "best.pt", "--out", taken)
    assert code == 1
    assert "Traceback" not in err and f"--out {taken}: exists and is not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert taken.read_text() == "mine"


def test_predict_cut_short_leaves_no_predictions(toy, cli, tmp_path, monkeypatch) -> None:
    """A kit that wrote some outputs and then hit a bad input: none of them stay, and files
    already in --out are left alone."""
    kit = get_kit("toy")
    real_predict = kit.predict

    def half_then_fail(predictor, input_path, out_dir, options):
        real_predict(predictor, input_path, out_dir, options)
        (out_dir / "images").mkdir()
        (out_dir / "images" / "a.png").write_bytes(b"half")
        raise DataError(f"{input_path}:2: a bad input half-way")

    monkeypatch.setattr(kit, "predict", half_then_fail)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.jsonl").write_text("an earlier run's\n")
    before = tree(tmp_path)
    code, _, err = cli(
        "toy", "predict", "--model", toy["export"], "--input", toy["rows"], "--out", out
    )
    assert code == 1 and "a bad input half-way" in err
    assert tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]

    nested = tmp_path / "new" / "deeper" / "pred"
    code, _, _ = cli(
        "toy", "predict", "--model", toy["export"], "--input", toy["rows"], "--out", nested
    )
    assert code == 1 and not (tmp_path / "new").exists()


def test_predict_into_an_existing_folder_merges(toy, cli, tmp_path) -> None:
    out = tmp_path / "pred"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "predictions.jsonl").write_text("old\n")
    code, stdout, err = cli(
        "toy", "predict", "--model", toy["export"], "--input", toy["rows"], "--out", out
    )
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["output"] == str(out / "predictions.jsonl")
    assert (out / "notes.txt").read_text() == "keep me"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_staged_outputs_merge_folders_and_clean_up(tmp_path) -> None:
    from e2ekit.core.fileio import staged_outputs

    target = tmp_path / "out"
    (target / "label").mkdir(parents=True)
    (target / "label" / "old.png").write_bytes(b"old")
    with staged_outputs(target) as staged:
        (staged / "label").mkdir()
        (staged / "label" / "new.png").write_bytes(b"new")
        (staged / "predictions.jsonl").write_text("x\n")
    assert tree(target) == {
        "label/old.png": b"old",
        "label/new.png": b"new",
        "predictions.jsonl": b"x\n",
    }
    with pytest.raises(RuntimeError), staged_outputs(target) as staged:
        (staged / "predictions.jsonl").write_text("y\n")
        raise RuntimeError("boom")
    assert (target / "predictions.jsonl").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_at_metrics_jsonl_names_the_file(tmp_path, monkeypatch) -> None:
    import builtins
    import errno

    from e2ekit.core.logs import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write_eval({"step": 1, "loss": 0.5})
    writer.write_eval({"step": 2, "loss": 0.4})
    real_open = builtins.open

    def full(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(OSError) as info:
        writer.write_eval({"step": 3, "loss": 0.3})
    assert info.value.filename == str(tmp_path / "metrics.jsonl")
    monkeypatch.setattr(builtins, "open", real_open)
    writer.truncate_after(1)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_staged_outputs_replace_a_file_with_a_link_to_itself(tmp_path) -> None:
    """Converting again into the same folder stages hard links of the same images: the
    merge keeps them (rename(2) of a link onto its twin does nothing) and cleans up."""
    from e2ekit.core.fileio import staged_outputs

    source = tmp_path / "a.jpg"
    source.write_bytes(b"jpeg")
    out = tmp_path / "out"
    for _ in range(2):
        with staged_outputs(out) as staged:
            (staged / "images").mkdir()
            os.link(source, staged / "images" / "a.jpg")
    assert (out / "images" / "a.jpg").read_bytes() == b"jpeg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "out"]  # no staged folder left
