"""The run skeleton under every training loop: no run is overwritten, env.json is written,
a non-finite loss is caught at the next log (without a per-step host sync), and the ctr loop
uses the same best/early-stop bookkeeping and honours the shared train keys."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from e2ekit.core.config import load_config
from e2ekit.core.engine import Trainer
from e2ekit.core.engine.checkpoint import load_checkpoint
from e2ekit.core.engine.hooks import Hook
from e2ekit.core.engine.run import default_run_dir
from e2ekit.core.errors import CheckpointError, E2EError
from e2ekit.toy.task import ToyConfig, ToyTask

from ..conftest import ROOT

TOY = ROOT / "configs" / "toy" / "tiny.yaml"
CTR = ROOT / "configs" / "ctr" / "tiny.yaml"


def toy_trainer(out: Path, *overrides: str, **kw) -> Trainer:
    cfg = load_config(TOY, ToyConfig, ["train.max_steps=3", "train.tensorboard=false", *overrides])
    return Trainer(ToyTask(cfg), out, **kw)


def test_a_run_folder_is_never_silently_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    toy_trainer(run).fit()
    first = load_checkpoint(run / "last.pt")["model"]
    with pytest.raises(CheckpointError, match=r"already holds a run.*--resume.*--overwrite"):
        toy_trainer(run)
    assert load_checkpoint(run / "last.pt")["model"].keys() == first.keys()  # untouched
    toy_trainer(run, "optim.lr=0.5", overwrite=True).fit()  # explicit: replaced
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one run's evaluations, not two runs mixed
    (tmp_path / "empty").mkdir()
    toy_trainer(tmp_path / "empty").fit()  # an empty folder is fine


def test_a_run_killed_before_its_first_checkpoint_names_a_way_on_that_works(
    tmp_path: Path,
) -> None:
    """Neither --resume (no last.pt) nor a plain rerun (a run is there) can continue it:
    both say to start it again with --overwrite, and the plain rerun never offers --resume."""
    run = tmp_path / "run"
    killed = toy_trainer(run)
    killed.run.open(0)  # what a kill -9 before the first save leaves: config.yaml, logs
    killed.run.close()
    with pytest.raises(CheckpointError, match=r"before its first checkpoint.*--overwrite") as exc:
        toy_trainer(run)
    assert "--resume" not in str(exc.value)
    with pytest.raises(CheckpointError, match=r"nothing to resume.*config\.yaml.*--overwrite"):
        toy_trainer(run, resume=True)
    toy_trainer(run, overwrite=True).fit()
    assert load_checkpoint(run / "last.pt")["step"] == 3


def test_default_run_dir_is_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = default_run_dir("toy", "tiny")
    first.mkdir(parents=True)
    second = default_run_dir("toy", "tiny")
    assert second != first and not second.exists()


def test_env_json_records_versions_and_hardware(tmp_path: Path) -> None:
    run = tmp_path / "run"
    toy_trainer(run).fit()
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["cpu"]["threads"] >= 1 and "python" in env and "gpus" in env


class _NanAfter(nn.Module):
    """Wraps the toy model; its loss becomes NaN from the ``after``-th call on."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, batch: dict) -> dict:
        losses = self.inner(batch)
        self.calls += 1
        if self.calls >= self.after:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_non_finite_loss_is_caught_at_the_next_log_naming_its_step(tmp_path: Path) -> None:
    cfg = load_config(
        TOY, ToyConfig, ["train.max_steps=8", "train.log_interval=4", "train.tensorboard=false"]
    )

    class NanTask(ToyTask):
        def build_model(self) -> nn.Module:
            return _NanAfter(super().build_model(), after=2)

    trainer = Trainer(NanTask(cfg), tmp_path / "run")
    with pytest.raises(E2EError, match=r"non-finite at step 1 \(\{'loss_ce': nan\}\)"):
        trainer.fit()
    assert trainer.step == 4  # found at the first log, not by a sync in every step


def ctr_train(out: Path, *overrides: str) -> dict:
    from e2ekit.ctr.config import CtrConfig
    from e2ekit.ctr.engine.fit import CtrTrainer

    cfg = load_config(CTR, CtrConfig, ["train.progress=false", *overrides])
    trainer = CtrTrainer(cfg, out)
    result = trainer.fit()
    result["_trainer"] = trainer
    return result


def test_ctr_loop_stops_early_on_the_shared_bookkeeping(tmp_path: Path) -> None:
    # a learning rate of ~0 never improves AUC after the first evaluation
    result = ctr_train(
        tmp_path / "run",
        "train.epochs=6",
        "optim.lr=1e-12",
        "sparse_optim.lr=1e-12",
        "train.early_stop.patience=2",
        "train.early_stop.min_delta=0.01",
    )
    trainer = result["_trainer"]
    assert trainer.stop_reason.startswith("early stop")
    assert trainer.epoch == 3  # evaluations after epochs 1, 2, 3: best, then 2 without gain
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["bad_evals"] == 2 and ckpt["best"]["step"] == result["step"]
    assert (tmp_path / "run" / "env.json").is_file()


def test_ctr_schedule_and_clipping_change_training(tmp_path: Path) -> None:
    plain = ctr_train(tmp_path / "a", "train.max_steps=6")["_trainer"]
    cosine = ctr_train(
        tmp_path / "b", "train.max_steps=6", "sched.type=cosine", "train.clip_grad_norm=0.01"
    )["_trainer"]
    assert plain.stepper.dense_opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert cosine.stepper.dense_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert cosine.stepper.rows.lr == pytest.approx(0.0, abs=1e-9)
    a, b = plain.model.state_dict(), cosine.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


class _BadRows(torch.utils.data.Dataset):
    """A train split whose samples fail to load (a corrupt file found at step 0)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        raise E2EError(f"data/train.csv:{i + 1}: malformed row")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    cfg = load_config(TOY, ToyConfig, ["train.max_steps=3", "train.tensorboard=false"])

    class BadData(ToyTask):
        def build_dataset(self, split: str):  # type: ignore[override]
            return _BadRows() if split == "train" else super().build_dataset(split)

    with pytest.raises(E2EError, match="malformed row"):
        Trainer(BadData(cfg), tmp_path / "run").fit()
    assert not (tmp_path / "run").exists()
    keep = tmp_path / "mine"
    (keep / "tb").mkdir(parents=True)  # the user's own folders, named like a run's
    (keep / "notes.txt").write_text("user file")
    (keep / "train.log").write_text("the user's log")
    with pytest.raises(E2EError):
        Trainer(BadData(cfg), keep).fit()
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt", "tb", "train.log"]
    # kept, not removed (the failed run may have appended its own lines after the user's)
    assert (keep / "train.log").read_text().startswith("the user's log")


class _CtrlCAt(Hook):
    """Stands in for Ctrl-C pressed after a given optimizer step."""

    def __init__(self, step: int) -> None:
        self.at = step

    def after_step(self, trainer: Trainer) -> None:  # type: ignore[override]
        if trainer.step == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_saves_last_pt_and_resume_continues(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = toy_trainer(run, "train.max_steps=6", "train.grad_accum=2")
    trainer.hooks.append(_CtrlCAt(3))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 3 and ckpt["micro"] == 6
    resumed = Trainer(trainer.task, run, resume=True)
    assert resumed.step == 3
    resumed.fit()
    assert load_checkpoint(run / "last.pt")["step"] == 6


def test_stale_save_temps_are_removed_and_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    toy_trainer(run).fit()
    stale = run / ".last.pt.tmp-12345"
    stale.write_bytes(b"half a checkpoint")
    resumed = toy_trainer(run, "train.max_steps=4", resume=True)
    resumed.run.open(resumed.step)
    resumed.run.close()
    assert not stale.exists()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"^no space left on device: .*last\.pt$"):
        resumed.save("last.pt")
    assert not list(run.glob(".*.tmp-*"))


def test_a_full_disk_behind_torchs_zip_writer_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk torch.save raises its zip writer's RuntimeError ("unexpected pos"),
    with the OSError of the write as its context: still one line naming the file."""
    trainer = toy_trainer(tmp_path / "run")
    trainer.run.open(0)
    trainer.run.close()

    def zip_writer_on_full_disk(obj, fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"PK\x03\x04 part of an archive")
        torn = "[enforce fail at inline_container.cc:672] . unexpected pos 1167232 vs 1167124"
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(torn)  # noqa: B904 (torch's writer chains it implicitly too)

    monkeypatch.setattr(torch, "save", zip_writer_on_full_disk)
    with pytest.raises(CheckpointError, match=r"^no space left on device: .*last\.pt$"):
        trainer.save("last.pt")
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_a_full_disk_at_metrics_json_is_one_line_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2ekit.core.engine.best import write_final_metrics

    def full_disk(self: Path, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        self.touch()  # open() made the file; its write found no space
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(CheckpointError, match=r"^no space left on device: .*metrics\.json$"):
        write_final_metrics(tmp_path, None, 3)
    assert list(tmp_path.iterdir()) == []


def test_ctr_run_with_no_valid_rows_writes_no_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("not\ta\tcriteo\trow\n" * 20)
    with pytest.raises(E2EError, match="no step"):
        ctr_train(tmp_path / "run", f"data.train={bad}", f"data.val={bad}")
    assert not (tmp_path / "run").exists()
