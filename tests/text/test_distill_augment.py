"""Augmentation for distillation: masking, neighbour replacement, n-grams, word tables."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from e2ekit.core.errors import DataError
from e2ekit.text.distill.augment import (
    AugmentSettings,
    Neighbours,
    augment,
    join_words,
    read_unlabeled,
    split_words,
)

ONLY_MASK = {"replace_prob": 0.0, "ngram_prob": 0.0}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("factor", -1),
        ("mask_prob", 1.5),
        ("replace_prob", -0.1),
        ("ngram_prob", 2.0),
        ("ngram_max", 0),
    ],
)
def test_settings_reject_bad_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentSettings(**{field: value})


# --- augment --------------------------------------------------------------------------


def test_mask_rate_matches_mask_prob() -> None:
    sentence = " ".join(f"w{i}" for i in range(5000))
    [variant] = augment([sentence], AugmentSettings(factor=1, mask_prob=0.1, **ONLY_MASK))
    words = variant.split()
    assert len(words) == 5000
    rate = words.count("[UNK]") / len(words)
    assert 0.07 <= rate <= 0.13
    # unmasked words stay in place
    assert all(w == f"w{i}" for i, w in enumerate(words) if w != "[UNK]")


def test_custom_mask_token() -> None:
    [variant] = augment(["a b"], AugmentSettings(factor=1, mask_prob=1.0, **ONLY_MASK), None, "<m>")
    assert variant == "<m> <m>"


def test_replacement_uses_only_listed_neighbours() -> None:
    table = {"good": ["great", "fine"], "film": ["movie"]}
    settings = AugmentSettings(factor=30, mask_prob=0.0, replace_prob=1.0, ngram_prob=0.0)
    variants = augment(["a good film", "Good film"], settings, Neighbours(table))
    assert set(variants) == {"a great movie", "a fine movie", "great movie", "fine movie"}
    half = AugmentSettings(factor=40, mask_prob=0.0, replace_prob=0.5, ngram_prob=0.0, seed=3)
    for variant in augment(["a good film today"], half, Neighbours(table)):
        a, good, film, today = variant.split()
        assert (a, today) == ("a", "today")
        assert good in {"good", "great", "fine"} and film in {"film", "movie"}


def test_ngram_spans_are_contiguous_and_short() -> None:
    words = [f"w{i}" for i in range(10)]
    settings = AugmentSettings(factor=200, mask_prob=0.0, ngram_prob=1.0, ngram_max=3)
    variants = augment([" ".join(words)], settings)
    lengths = set()
    for variant in variants:
        span = variant.split()
        start = words.index(span[0])
        assert span == words[start : start + len(span)]
        lengths.add(len(span))
    assert lengths == {1, 2, 3}
    # n is capped at the length; the whole sentence is the original and so dropped
    short = augment(["x y"], AugmentSettings(factor=50, mask_prob=0.0, ngram_prob=1.0))
    assert sorted(short) == ["x", "y"]


def test_same_seed_same_variants_other_seed_differs() -> None:
    items = ["the film was good but long", "a bad plot", ("is it good", "it is fine")]
    table = Neighbours({"good": ["great"], "bad": ["poor"]})
    first = augment(items, AugmentSettings(seed=7), table)
    random.seed(11)
    expected = random.random()
    random.seed(11)
    again = augment(items, AugmentSettings(seed=7), table)
    assert random.random() == expected  # the global RNG is left alone
    assert first == again and len(first) > 10
    assert augment(items, AugmentSettings(seed=8), table) != first


def test_duplicates_originals_and_empty_items_are_dropped() -> None:
    unchanged = AugmentSettings(factor=10, mask_prob=0.0, **{**ONLY_MASK})
    assert augment(["a  good film", "", "   "], unchanged) == []
    all_masked = AugmentSettings(factor=10, mask_prob=1.0, **ONLY_MASK)
    assert augment(["a good"], all_masked) == ["[UNK] [UNK]"]
    many = augment(["one two three"], AugmentSettings(factor=100, mask_prob=0.5, **ONLY_MASK))
    assert len(many) == len(set(many)) == 7  # 2**3 masks minus the original


def test_pairs_are_augmented_per_side() -> None:
    pair = ("a b c d", "e f g h")
    cut = AugmentSettings(factor=60, mask_prob=0.0, ngram_prob=1.0, ngram_max=1)
    variants = augment([pair], cut)
    assert all(isinstance(v, tuple) and len(v) == 2 for v in variants)
    assert {v[0] for v in variants} == set("abcd")  # each side cut on its own
    assert {v[1] for v in variants} == set("efgh")
    assert len(variants) == len(set(variants)) > 8
    masked = augment([("x y", "")], AugmentSettings(factor=20, mask_prob=0.5, **ONLY_MASK))
    assert set(masked) == {("[UNK] y", ""), ("x [UNK]", ""), ("[UNK] [UNK]", "")}


def test_cjk_split_join_round_trip() -> None:
    comma = "\uff0c"  # fullwidth, as Chinese text writes it
    chinese = f"我很好{comma}谢谢。"
    assert split_words(chinese) == ["我", "很", "好", comma, "谢", "谢", "。"]
    for text in [chinese, "a good film", "我爱 NLP 课"]:
        assert join_words(split_words(text)) == text
    assert join_words(["我", "[UNK]", "好"]) == "我 [UNK] 好"
    settings = AugmentSettings(factor=20, mask_prob=0.3, **ONLY_MASK)
    for variant in augment(["这部电影很好看"], settings):
        assert " " not in re.sub(r" ?\[UNK\] ?", "", variant)  # spaces only around masks


# --- Neighbours -----------------------------------------------------------------------


def test_sample_tries_lowercase_and_returns_none_for_unknown() -> None:
    table = Neighbours({"good": ["great"], "film": []})
    rng = random.Random(0)
    assert table.sample("Good", rng) == "great"
    assert table.sample("film", rng) is None  # an empty list is no entry
    assert table.sample("unknown", rng) is None
    assert len(table) == 1


def test_from_vectors_finds_the_planted_neighbour() -> None:
    words = ["king", "queen", "apple", "pear", "car"]
    vectors = np.array(
        [[1.0, 0.1, 0.0], [0.9, 0.2, 0.0], [0.0, 1.0, 0.1], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]]
    )
    table = Neighbours.from_vectors(words, vectors * 7.0, k=1)  # cosine: the scale is irrelevant
    assert [table.lookup(w) for w in words[:4]] == [("queen",), ("king",), ("pear",), ("apple",)]
    ranked = Neighbours.from_vectors(words, vectors, k=10)  # k capped at the others
    assert ranked.lookup("king") == ("queen", "pear", "apple", "car")
    kept = Neighbours.from_vectors(words, vectors, k=1, keep={"king", "apple", "pear"})
    assert kept.lookup("king") == ("pear",)  # queen is not kept, so not a neighbour
    assert kept.lookup("queen") is None and len(kept) == 3


def test_from_vectors_matches_brute_force_on_a_larger_table() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((900, 16)).astype(np.float32)
    vectors[5] = 0.0  # a padding row has no direction
    words = [f"w{i}" for i in range(900)]
    table = Neighbours.from_vectors(words, vectors, k=4)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    sims[:, 5] = -np.inf
    for i in (0, 17, 450, 899):
        expected = tuple(words[j] for j in np.argsort(-sims[i], kind="stable")[:4])
        assert table.lookup(words[i]) == expected
    assert table.lookup("w5") is None and len(table) == 899


W2V = "king 1 0.1 0\nqueen 0.9 0.2 0\napple 0 1 0.1\npear 0.1 0.9 0\n"


@pytest.mark.parametrize("header", ["", "4 3\n"])
def test_from_word2vec_text_with_and_without_header(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path, "vectors.txt", header + W2V)
    table = Neighbours.from_word2vec_text(path, k=1)
    assert table.lookup("king") == ("queen",) and table.lookup("pear") == ("apple",)
    limited = Neighbours.from_word2vec_text(path, k=1, limit=3)
    assert limited.lookup("apple") == ("queen",) and limited.lookup("pear") is None
    kept = Neighbours.from_word2vec_text(path, k=1, keep={"queen", "apple", "pear"})
    assert kept.lookup("king") is None and kept.lookup("queen") == ("pear",)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("4 3\nking 1 0 0\nqueen 1 0\n", r"vectors\.txt:3: expected a word and 3 values, found 2"),
        ("king 1 0 0\nqueen 1 0 0 0\n", r"vectors\.txt:2: expected a word and 3 values, found 4"),
        ("king 1 0 0\nqueen 1 x 0\n", r"vectors\.txt:2: value 'x' is not a number"),
        ("", r"vectors\.txt: file is empty"),
        ("\n\n", r"vectors\.txt: file is empty"),
    ],
)
def test_from_word2vec_text_errors_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, "vectors.txt", text)
    with pytest.raises(DataError, match=match):
        Neighbours.from_word2vec_text(path)


def test_from_token_embeddings_keeps_whole_words_only() -> None:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused3]"]
    tokens += ["good", "great", "##s", "bad", "awful", ".", "!!", "film", "movie", "##ly"]
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    rng = np.random.default_rng(0)
    good, bad, film = rng.standard_normal((3, 8))
    emb = rng.standard_normal((len(tokens), 8))
    # every skipped entry sits right next to 'good', so any leak would be its neighbour
    for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused3]", "##s", ".", "!!", "##ly"]:
        emb[vocab[t]] = good
    emb[vocab["good"]], emb[vocab["great"]] = good, good + 0.05
    emb[vocab["bad"]], emb[vocab["awful"]] = bad, bad + 0.05
    emb[vocab["film"]], emb[vocab["movie"]] = film, film + 0.05
    table = Neighbours.from_token_embeddings(tok, emb, k=1)
    assert len(table) == 6
    found = [table.lookup(w) for w in ["good", "bad", "film"]]
    assert found == [("great",), ("awful",), ("movie",)]
    assert table.sample("Great", random.Random(0)) == "good"  # lowercase vocabulary
    for skipped in ["[CLS]", "[unused3]", "##s", ".", "!!"]:
        assert table.lookup(skipped) is None
    kept = Neighbours.from_token_embeddings(tok, emb, k=1, keep={"Good", "bad", "awful"})
    assert len(kept) == 3 and kept.lookup("bad") == ("awful",)


# --- read_unlabeled -------------------------------------------------------------------


def test_read_unlabeled_plain_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "unlabeled.txt", "a good film\n\n  \n我很好\r\n")
    assert read_unlabeled(path, pair=False) == ["a good film", "我很好"]


def test_read_unlabeled_tsv_with_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "pairs.tsv", "text_a\ttext_b\nis it good\tit is\nwho\tme\n")
    assert read_unlabeled(path, pair=True) == [("is it good", "it is"), ("who", "me")]
    assert read_unlabeled(path, pair=False) == ["is it good", "who"]


def test_read_unlabeled_pair_task_needs_pairs(tmp_path: Path) -> None:
    path = _write(tmp_path, "single.txt", "only one text\n")
    with pytest.raises(DataError, match=r"single\.txt: item 1 has one text"):
        read_unlabeled(path, pair=True)


def test_read_unlabeled_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file: .*nothing\.txt"):
        read_unlabeled(tmp_path / "nothing.txt", pair=False)
