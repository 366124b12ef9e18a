"""Readers: happy paths and every error path names file:line and a fix."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.text.data.readers import (
    TextExample,
    build_label_map,
    check_labels,
    read_ner,
    read_squad,
    read_text_pairs,
    read_texts,
    split_words,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- cls / pair TSV -------------------------------------------------------------------


def test_label_first_bom_extra_column_quotes_and_blank_lines(tmp_path):
    path = _write(
        tmp_path, "train.tsv", '\ufefflabel\tqid\ttext_a\n1\tq1\ta "good\n\n0\tq2\tbad\r\n'
    )
    examples = read_text_pairs(path, pair=False, require_label=True)
    assert examples == [
        TextExample(text_a='a "good', text_b=None, label="1", line=2),
        TextExample(text_a="bad", text_b=None, label="0", line=4),
    ]


def test_pair_reads_text_b_in_any_order(tmp_path):
    path = _write(tmp_path, "dev.tsv", "text_b\tlabel\ttext_a\nsecond\t1\tfirst\n")
    (ex,) = read_text_pairs(path, pair=True, require_label=True)
    assert (ex.text_a, ex.text_b, ex.label) == ("first", "second", "1")


def test_unlabeled_file_gives_none_labels(tmp_path):
    path = _write(tmp_path, "test.tsv", "text_a\nhello\nworld\n")
    examples = read_text_pairs(path, pair=False, require_label=False)
    assert [e.label for e in examples] == [None, None]


def test_missing_column_names_file_and_columns(tmp_path):
    path = _write(tmp_path, "train.tsv", "text\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no column text_a") as err:
        read_text_pairs(path, pair=False, require_label=True)
    assert "found ['text', 'label']" in str(err.value)


def test_pair_requires_text_b(tmp_path):
    path = _write(tmp_path, "train.tsv", "text_a\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no column text_b"):
        read_text_pairs(path, pair=True, require_label=True)


def test_wrong_column_count_names_line_and_counts(tmp_path):
    path = _write(tmp_path, "train.tsv", "text_a\tlabel\nok\t1\ntab\tinside\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 2 .* but found 3"):
        read_text_pairs(path, pair=False, require_label=True)


def test_empty_label_and_bad_utf8(tmp_path):
    path = _write(tmp_path, "a.tsv", "text_a\tlabel\nok\t\n")
    with pytest.raises(DataError, match=r"a\.tsv:2: empty label"):
        read_text_pairs(path, pair=False, require_label=True)
    bad = tmp_path / "b.tsv"
    bad.write_bytes(b"text_a\tlabel\nok\t1\n\xff\t0\n")
    with pytest.raises(DataError, match=r"b\.tsv:3: not valid UTF-8"):
        read_text_pairs(bad, pair=False, require_label=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"no such file: .*nope\.tsv"):
        read_text_pairs(tmp_path / "nope.tsv", pair=False, require_label=True)
    with pytest.raises(DataError, match="no such file"):
        read_ner(tmp_path / "nope.tsv", require_label=True)
    with pytest.raises(DataError, match="no such file"):
        read_squad(tmp_path / "nope.json", require_answers=True)


# --- labels ---------------------------------------------------------------------------


def test_build_label_map():
    assert build_label_map(["10", "2", "1", "2", None]) == ["1", "2", "10"]
    assert build_label_map(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert build_label_map(["a"], ["z", "a"]) == ["z", "a"]
    with pytest.raises(ConfigError, match="twice"):
        build_label_map([], ["a", "a"])


def test_unknown_dev_label_names_file_line_label_and_fix(tmp_path):
    path = _write(tmp_path, "dev.tsv", "text_a\tlabel\nx\tpos\ny\tneutral\n")
    examples = read_text_pairs(path, pair=False, require_label=True)
    with pytest.raises(DataError) as err:
        check_labels(examples, ["neg", "pos"], path)
    msg = str(err.value)
    assert "dev.tsv:3:" in msg and "'neutral'" in msg and "neg, pos" in msg
    assert "add it to task.labels or fix the row" in msg


# --- NER ------------------------------------------------------------------------------


def test_ner_header_spaces_and_msra_separator(tmp_path):
    text = (
        "text_a\tlabel\nJohn  lives in New York\tB-PER O O B-LOC I-LOC\n"
        "我\x02爱\x02北\x02京\tO\x02O\x02B-LOC\x02I-LOC\n"
    )
    examples = read_ner(_write(tmp_path, "ner.tsv", text), require_label=True)
    assert examples[0].tokens == ["John", "lives", "in", "New", "York"]
    assert examples[0].tags[-1] == "I-LOC" and examples[0].line == 2
    assert examples[1].tokens == ["我", "爱", "北", "京"] and examples[1].tags[2] == "B-LOC"


def test_ner_unlabeled_single_column(tmp_path):
    examples = read_ner(_write(tmp_path, "t.tsv", "text_a\na b c\n"), require_label=False)
    assert examples[0].tokens == ["a", "b", "c"] and examples[0].tags is None


def test_ner_token_tag_count_mismatch(tmp_path):
    path = _write(tmp_path, "ner.tsv", "a b\tO O\na b c\tO O\n")
    with pytest.raises(DataError, match=r"ner\.tsv:2: 3 tokens but 2 tags"):
        read_ner(path, require_label=True)


def test_ner_bad_tag(tmp_path):
    path = _write(tmp_path, "ner.tsv", "a b\tO PER\n")
    with pytest.raises(DataError, match=r"ner\.tsv:1: tag 'PER' \(token 2\) is not a BIO"):
        read_ner(path, require_label=True)


def test_ner_missing_label_column(tmp_path):
    path = _write(tmp_path, "ner.tsv", "a b\tO O\na b\n")
    with pytest.raises(DataError, match=r"ner\.tsv:2: expected 2 .* found 1"):
        read_ner(path, require_label=True)


def test_check_labels_for_ner_tags(tmp_path):
    path = _write(tmp_path, "dev.tsv", "a b\tO B-PER\na b\tO B-MISC\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: unknown label 'B-MISC'"):
        check_labels(read_ner(path, require_label=True), ["O", "B-PER", "I-PER"], path)


# --- SQuAD ----------------------------------------------------------------------------


def _squad(tmp_path: Path, answers: list[dict], context: str = "The cat sat. The cat ran.") -> Path:
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [{"id": "q1", "question": "Who ran?", "answers": answers}],
                    }
                ],
            }
        ],
    }
    return _write(tmp_path, "train.json", json.dumps(doc, indent=1))


def test_squad_happy(tmp_path):
    (ex,) = read_squad(
        _squad(tmp_path, [{"text": "cat", "answer_start": 17}]), require_answers=True
    )
    assert (ex.qid, ex.question, ex.title) == ("q1", "Who ran?", "t")
    assert ex.answers == [{"text": "cat", "answer_start": 17}]


def test_squad_bad_answer_start_is_fixed_to_nearest_and_counted(tmp_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("e2ekit")
    logger.addHandler(handler)
    try:
        path = _squad(tmp_path, [{"text": "cat", "answer_start": 15}])
        (ex,) = read_squad(path, require_answers=True)
    finally:
        logger.removeHandler(handler)
    assert ex.answers[0]["answer_start"] == 17  # the second "cat" is nearer to 15 than the first
    assert any("repaired answer_start of 1 answer" in r.getMessage() for r in records)


def test_squad_unfixable_answer_names_file_line_and_qid(tmp_path):
    path = _squad(tmp_path, [{"text": "dog", "answer_start": 4}])
    with pytest.raises(DataError, match=r"train\.json:\d+: question 'q1': answer 'dog'") as err:
        read_squad(path, require_answers=True)
    line = int(str(err.value).split(":")[1])
    assert '"id": "q1"' in path.read_text().splitlines()[line - 1]


def test_squad_requires_answers_only_when_asked(tmp_path):
    path = _squad(tmp_path, [])
    assert read_squad(path, require_answers=False)[0].answers == []
    with pytest.raises(DataError, match="question 'q1' has no answers"):
        read_squad(path, require_answers=True)


def test_squad_malformed_json_reports_line_and_column(tmp_path):
    path = _write(tmp_path, "bad.json", '{"data": [\n  {"title": "x",,}\n]}')
    with pytest.raises(DataError, match=r"bad\.json:2: invalid JSON at column \d+"):
        read_squad(path, require_answers=True)
    with pytest.raises(DataError, match=r"list\.json:1: not SQuAD"):
        read_squad(_write(tmp_path, "list.json", "[]"), require_answers=True)


# --- predict inputs and word splitting ------------------------------------------------


def test_read_texts_formats(tmp_path, monkeypatch):
    assert read_texts(_write(tmp_path, "a.txt", "one\n\ntwo\n")) == ["one", "two"]
    assert read_texts(_write(tmp_path, "b.json", '["x", {"text": "y"}]')) == ["x", "y"]
    jsonl = _write(tmp_path, "c.jsonl", '{"text_a": "p", "text_b": "q"}\n"r"\n')
    assert read_texts(jsonl) == [("p", "q"), "r"]
    tsv = _write(tmp_path, "d.tsv", "label\ttext_a\ttext_b\n1\tp\tq\n")
    assert read_texts(tsv) == [("p", "q")]
    monkeypatch.setattr("sys.stdin", io.StringIO("s1\ns2\n"))
    assert read_texts("-") == ["s1", "s2"]
    with pytest.raises(DataError, match=r"e\.jsonl:2: invalid JSON"):
        read_texts(_write(tmp_path, "e.jsonl", '"ok"\n{bad\n'))


def test_split_words():
    assert split_words("我爱北京 abc") == ["我", "爱", "北", "京", "abc"]
    assert split_words("  Hello,  world\tagain ") == ["Hello,", "world", "again"]
    comma = "\uff0c"  # fullwidth comma: CJK punctuation is a word of its own
    assert split_words(f"在东京{comma}Tokyo") == ["在", "东", "京", comma, "Tokyo"]
