"""``e2ekit text distill`` end to end on a tiny teacher: every student kind, the table, the
exports served by the text service, and the mistakes it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
DISTILL = str(ROOT / "configs" / "text" / "distill_tiny.yaml")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from e2ekit.core.cli import main

    run = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["text", "train", "-c", TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def distilled(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from e2ekit.core.cli import main

    out = tmp_path_factory.mktemp("distill") / "out"
    summary = out.parent / "summary.json"
    code = main(["text", "distill", "-c", DISTILL, "--teacher", str(teacher), "--out", str(out)])
    assert code == 0
    summary.write_text("{}")
    return out, json.loads((out / "distill.json").read_text())


def test_every_student_is_trained_twice_exported_and_measured(distilled) -> None:
    out, result = distilled
    rows = result["models"]
    names = [(r["model"], r["trained_on"]) for r in rows]
    # students and baseline: each kind once on the labels alone, once distilled
    assert names[0] == ("teacher", "-")
    for kind in ("bow", "cnn", "bilstm", "tiny"):
        assert (kind, "labels") in names and (kind, "distilled") in names
        assert (out / "students" / kind / "model.onnx").is_file()
        assert (out / "students" / f"{kind}_labels" / "deploy.yaml").is_file()
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["params"] > 0 and r["model_bytes"] > 0
        assert r["latency_ms_b1"] > 0 and r["throughput_b64"] > 0
    teacher_row = rows[0]
    bow = next(r for r in rows if r["model"] == "bow")
    assert bow["params"] < teacher_row["params"]
    assert bow["speedup_b1"] == pytest.approx(
        teacher_row["latency_ms_b1"] / bow["latency_ms_b1"], rel=0.05
    )
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "x teacher, batch 1" in table


def test_transfer_set_holds_augmented_rows_with_teacher_logits(distilled) -> None:
    out, result = distilled
    counts = result["transfer_rows"]
    lines = (out / "transfer.jsonl").read_text().splitlines()
    assert len(lines) == counts["training"] + counts["augmented"] + counts["unlabeled"]
    # distill_tiny.yaml: factor 2 -> at most two variants per training row, most rows get one
    assert counts["training"] < counts["augmented"] <= 2 * counts["training"]
    rows = [json.loads(x) for x in lines]
    labelled = rows[: counts["training"]]
    assert all("label" in r for r in labelled)
    assert not any("label" in r for r in rows[counts["training"] :])
    assert all(len(r["logits"]) == len(result["labels"]) for r in rows)


def test_teacher_row_is_the_exported_teacher(distilled, teacher: Path) -> None:
    """The teacher's accuracy in the table is its own eval accuracy (same dev rows)."""
    out, result = distilled
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert result["models"][0]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert (out / "teacher" / "model.onnx").is_file()


def test_a_student_predicts_and_serves_like_any_text_export(cli, distilled, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from e2ekit.core.infer import Predictor
    from e2ekit.core.serve import create_app
    from e2ekit.text.kit import KIT

    out, _ = distilled
    student = out / "students" / "cnn"
    inp = tmp_path / "in.txt"
    inp.write_text("the service was not good at all\ngreat food and friendly staff\n")
    code, _, err = cli(
        "text", "predict", "--model", student, "--input", inp, "--out", tmp_path / "p"
    )
    assert code == 0, err
    preds = [json.loads(x) for x in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(p["label"] in p["scores"] for p in preds)
    app = create_app(KIT.endpoints(Predictor(student)))
    with TestClient(app) as client:
        r = client.post("/predict", json={"texts": ["great food and friendly staff"]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["label"] == preds[1]["label"]


def test_pair_teacher_distils_with_segment_aware_students(cli, tmp_path) -> None:
    run = tmp_path / "pair-teacher"
    code, _, err = cli("text", "train", "-c", TINY, "-o", "task.type=pair", "--out", run)
    assert code == 0, err
    out = tmp_path / "pair-distill"
    code, stdout, err = cli(
        "text",
        "distill",
        "-c",
        DISTILL,
        "-o",
        "task.type=pair",
        "-o",
        "distill.students=[bow,bilstm]",
        "-o",
        "distill.baseline=false",
        "--teacher",
        run,
        "--out",
        out,
    )
    assert code == 0, err
    summary = last_json(stdout)
    assert {"bow_accuracy", "bilstm_accuracy"} <= set(summary)
    assert "bow_labels_accuracy" not in summary  # baseline off
    deploy = (out / "students" / "bow" / "deploy.yaml").read_text()
    assert "task: pair" in deploy


def test_refusals_name_the_fix(cli, teacher: Path, tmp_path) -> None:
    def distill(*args: object) -> str:
        code, _, err = cli("text", "distill", "-c", DISTILL, *args)
        assert code != 0
        return err

    assert "--teacher" in distill("--out", tmp_path / "a")
    assert "does not exist" in distill("--teacher", tmp_path / "nope")
    err = distill("-o", "task.type=pair", "--teacher", teacher, "--out", tmp_path / "b")
    assert "task.type=cls" in err
    assert not (tmp_path / "b").exists()  # the teacher export it began is removed too
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "--overwrite" in distill("--teacher", teacher, "--out", busy)
    assert (busy / "keep.txt").is_file()
    assert "twice" in distill("-o", "distill.students=[bow,bow]", "--teacher", teacher)
    tiny = ("-o", "distill.student.tiny_layers=9", "-o", "distill.students=[tiny]")
    assert "tiny_layers=9" in distill(*tiny, "--teacher", teacher, "--out", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_tiny_student_keeps_evenly_spaced_teacher_layers() -> None:
    from e2ekit.text.distill.tiny import kept_layers

    assert kept_layers(6, 2) == [2, 5]
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(12, 4) == [2, 5, 8, 11]
    assert kept_layers(2, 2) == [0, 1]


def test_speed_table_cells() -> None:
    from e2ekit.text.distill.report import markdown_table

    text = markdown_table(
        [{"model": "bow", "trained_on": "distilled", "accuracy": 0.91234, "speedup_b1": 123.44}]
    )
    assert "| bow | distilled | 91.23 |" in text and "| 123.4 |" in text
    assert np.isfinite(0.0)


# -- every distill key changes what the run does ------------------------------------------------
def _cfg(*overrides: str):
    from e2ekit.core.config import load_config
    from e2ekit.text.config import TextConfig

    return load_config(DISTILL, TextConfig, list(overrides))


def test_augment_keys_shape_the_transfer_set() -> None:
    from e2ekit.text.distill.augment import Neighbours, augment
    from e2ekit.text.distill.pipeline import augment_settings

    items = [f"the movie number {i} was good and very well acted" for i in range(40)]
    table = Neighbours({"good": ["fine"], "movie": ["film"]})
    base = augment(items, augment_settings(_cfg()), table)
    settings = augment_settings(
        _cfg(
            "distill.augment.factor=4",
            "distill.augment.mask_prob=0.5",
            "distill.augment.replace_prob=1.0",
            "distill.augment.ngram_prob=1.0",
            "distill.augment.ngram_max=2",
        )
    )
    assert (settings.factor, settings.mask_prob, settings.replace_prob) == (4, 0.5, 1.0)
    assert (settings.ngram_prob, settings.ngram_max) == (1.0, 2)
    more = augment(items, settings, table)
    assert len(more) > len(base)
    assert all(len(v.split()) <= 2 for v in more)  # ngram_prob 1, ngram_max 2
    assert not augment(items, augment_settings(_cfg("distill.augment.factor=0")), table)


def test_neighbours_and_word_vectors_keys(teacher: Path, tmp_path: Path) -> None:
    from e2ekit.text.distill.pipeline import _neighbours, _runner, _word_side, _word_student
    from e2ekit.text.distill.teacher import load_teacher

    t = load_teacher(str(teacher), tmp_path / "t", "cls", need_model=False)
    runner = _runner(t.export_dir, _cfg())
    words = {"good", "bad", "great", "awful", "fine", "poor", "nice", "terrible"}
    three = _neighbours(_cfg("distill.augment.neighbours=3"), t, runner, words)
    assert three is not None and max(len(three.lookup(w) or ()) for w in words) == 3
    vectors = tmp_path / "vec.txt"
    vectors.write_text(
        "good 1 0 0 0\ngreat 0.9 0.1 0 0\nbad 0 1 0 0\nawful 0 0.9 0.1 0\n", encoding="utf-8"
    )
    cfg = _cfg(f"distill.augment.word_vectors={vectors}", "distill.student.embed_dim=4")
    table = _neighbours(cfg, t, runner, words)
    assert table.lookup("good")[0] == "great" and table.lookup("bad")[0] == "awful"
    tok, _ = _word_side(cfg, ["good film", "bad film", "great"])
    model = _word_student(cfg, "bow", tok, 2, "cls")
    row = model.embedding.weight[tok.get_vocab()["good"]].detach().numpy()
    assert np.allclose(row, [1, 0, 0, 0])
    with pytest.raises(Exception, match="embed_dim"):
        _word_student(_cfg(f"distill.augment.word_vectors={vectors}"), "bow", tok, 2, "cls")


def test_student_keys_build_the_student() -> None:
    from torch import nn

    from e2ekit.text.distill.pipeline import _word_side, _word_student

    texts = ["a b c d e f g h i j k l m n o p"] + ["a a b"] * 3
    cfg = _cfg(
        "distill.student.embed_dim=12",
        "distill.student.hidden=10",
        "distill.student.kernel_sizes=[2,5]",
        "distill.student.dropout=0.3",
        "distill.student.vocab_size=20",
        "distill.student.min_freq=2",
        "distill.student.max_seq_len=6",
    )
    tok, feats = _word_side(cfg, texts)
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"}
    assert max(len(f["input_ids"]) for f in feats) == 6
    cnn = _word_student(cfg, "cnn", tok, 2, "cls")
    assert cnn.embedding.weight.shape[1] == 12
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv1d)]
    assert sorted(c.kernel_size[0] for c in convs) == [2, 5] and convs[0].out_channels == 10
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in cnn.modules())
    big, _ = _word_side(_cfg("distill.student.vocab_size=16"), [" ".join("wxyzabcdefghijkl")])
    assert len(big) == 16


def test_fit_keys_reach_the_loop() -> None:
    import torch

    from e2ekit.text.distill.pipeline import _word_side, _word_student, student_fit
    from e2ekit.text.distill.training import fit_student

    cfg = _cfg(
        "distill.student.epochs=2",
        "distill.student.batch_size=5",
        "distill.student.lr=0.01",
        "distill.student.tiny_lr=0.003",
        "distill.temperature=4",
        "distill.soft_weight=0.25",
        "distill.soft_loss=mse",
    )
    fit = student_fit(cfg, "cnn")
    assert (fit.epochs, fit.batch_size, fit.lr, fit.optimizer) == (2, 5, 0.01, "adam")
    assert (fit.temperature, fit.soft_weight, fit.soft_loss) == (4, 0.25, "mse")
    tiny = student_fit(cfg, "tiny")
    assert (tiny.lr, tiny.optimizer) == (0.003, "adamw")
    texts = [f"w{i % 7} w{i % 5} w{i % 3}" for i in range(23)]
    tok, feats = _word_side(cfg, texts)
    labels = np.array([i % 2 for i in range(23)])
    logits = np.random.default_rng(0).normal(size=(23, 2)).astype(np.float32)
    weights, steps = [], []
    for c in (cfg, _cfg("distill.soft_loss=kl", "distill.student.epochs=2")):
        torch.manual_seed(0)
        model = _word_student(c, "bow", tok, 2, "cls")
        stats = fit_student(model, feats, labels, logits, student_fit(c, "bow"), pad_id=0, desc="t")
        weights.append(model.embedding.weight.detach().clone())
        steps.append(stats["steps"])
    assert steps == [2 * 5, 2 * 2]  # 23 rows: batch_size 5 -> 5 steps an epoch, 16 -> 2
    assert not torch.allclose(weights[0], weights[1])


def test_teacher_batch_size_sets_the_labelling_batch() -> None:
    from e2ekit.text.distill.pipeline import _teacher_logits

    class Recorder:
        batch_size = 32

        def __init__(self) -> None:
            self.calls: list[int] = []

        def class_logits(self, items: list) -> np.ndarray:
            self.calls.append(self.batch_size)
            return np.array([[len(t), 0.0] for t in items], np.float32)

    runner = Recorder()
    texts = ["x" * ((i * 7) % 13 + 1) for i in range(50)]
    out = _teacher_logits(runner, texts, 3)  # teacher_batch_size: 3
    assert runner.calls and set(runner.calls) == {3} and out.shape == (50, 2)
    # rows go to the teacher shortest first; the logits come back in the rows' own order
    assert out[:, 0].tolist() == [len(t) for t in texts]


def test_bench_samples_and_unlabeled_keys(distilled, teacher: Path, tmp_path: Path) -> None:
    from e2ekit.core.cli import main

    _, result = distilled
    assert all(r["latency_rows"] == 8 for r in result["models"])  # bench_samples: 8
    extra = tmp_path / "more.txt"
    extra.write_text("an unlabelled review\nanother one here\n\nthird line\n", encoding="utf-8")
    out = tmp_path / "u"
    args = ["text", "distill", "-c", DISTILL, "-o", f"distill.teacher={teacher}"]
    args += ["-o", f"distill.augment.unlabeled={extra}", "-o", "distill.augment.factor=0"]
    args += ["-o", "distill.students=[bow]", "-o", "distill.baseline=false", "--out", str(out)]
    args += ["-o", "distill.bench_samples=3"]
    assert main(args) == 0
    res = json.loads((out / "distill.json").read_text())
    assert res["transfer_rows"]["unlabeled"] == 3 and res["transfer_rows"]["augmented"] == 0
    assert [r["latency_rows"] for r in res["models"]] == [3, 3]


def test_tiny_layers_key_sets_the_student_depth(distilled) -> None:
    import yaml

    out, _ = distilled
    deploy = yaml.safe_load((out / "students" / "tiny" / "deploy.yaml").read_text())
    assert deploy["torch"]["config"]["model"]["from_scratch"]["num_hidden_layers"] == 1
