"""Readers: happy paths and every error path names file:line and a fix."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from e2ekit.core.errors import ConfigError, DataError
from e2ekit.text.config import TextConfig, TextData
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
    path = _write(tmp_path, "train.tsv", "content\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no column text_a") as err:
        read_text_pairs(path, pair=False, require_label=True)
    assert "found ['content', 'label']" in str(err.value)
    assert "data.columns" in str(err.value)


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


def test_glue_and_common_aliases_without_config(tmp_path):
    glue = _write(tmp_path, "g.tsv", "idx\tsentence1\tsentence2\tlabel\n0\tA\tB\t1\n")
    (ex,) = read_text_pairs(glue, pair=True, require_label=True)
    assert (ex.text_a, ex.text_b, ex.label) == ("A", "B", "1")
    for header in ("text\tlabels", "sentence\tlabel", "Text\t Label "):
        path = _write(tmp_path, "a.tsv", f"{header}\nhello\tpos\n")
        (ex,) = read_text_pairs(path, pair=False, require_label=True)
        assert (ex.text_a, ex.label) == ("hello", "pos")
    both = _write(tmp_path, "b.tsv", "text\ttext_a\tlabel\nno\tyes\t1\n")
    assert read_text_pairs(both, pair=False, require_label=True)[0].text_a == "yes"


def test_columns_mapping(tmp_path):
    path = _write(
        tmp_path,
        "mrpc.tsv",
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\ta " x\tb\n',
    )
    cols = {"text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}
    (ex,) = read_text_pairs(path, pair=True, require_label=True, columns=cols)
    assert (ex.text_a, ex.text_b, ex.label, ex.line) == ('a " x', "b", "1", 2)
    # a test split without the mapped label column reads as unlabeled
    test = _write(tmp_path, "test.tsv", "#1 String\t#2 String\np\tq\n")
    (ex,) = read_text_pairs(test, pair=True, require_label=False, columns=cols)
    assert (ex.text_a, ex.text_b, ex.label) == ("p", "q", None)
    with pytest.raises(DataError, match=r"mrpc\.tsv:1: header has no column '#3 String' "):
        read_text_pairs(
            path, pair=True, require_label=True, columns={**cols, "text_b": "#3 String"}
        )
    with pytest.raises(DataError, match=r"data\.columns\.text_b"):
        read_text_pairs(
            path, pair=True, require_label=True, columns={**cols, "text_b": "#3 String"}
        )
    with pytest.raises(DataError, match=r"mrpc\.tsv:1: text_a and text_b both read column"):
        read_text_pairs(
            path, pair=True, require_label=True, columns={**cols, "text_b": "#1 String"}
        )
    with pytest.raises(ConfigError, match=r"data\.columns: unknown key 'txt_a'"):
        read_text_pairs(path, pair=True, require_label=True, columns={"txt_a": "#1 String"})


def test_columns_config_key_reaches_the_reader(tmp_path):
    from e2ekit.text.task import TextTask

    with pytest.raises(ValueError, match="unknown key 'sentence'"):
        TextData(columns={"sentence": "x"})
    path = _write(tmp_path, "t.tsv", "Quality\ts1\ts2\n0\tx\ty\n")
    cfg = TextConfig.model_validate(
        {
            "task": {"type": "pair"},
            "data": {
                "train": str(path),
                "columns": {"text_a": "s1", "text_b": "s2", "label": "Quality"},
            },
        }
    )
    task = TextTask(cfg)
    (ex,) = task.read_examples(path, "train")
    assert (ex.text_a, ex.text_b, ex.label) == ("x", "y", "0")
    assert task.label_names() == ["0"]


def test_csv_quoting_multiline_and_line_numbers(tmp_path):
    text = (
        "\ufefflabel,sentence1,sentence2\r\n"
        'yes,"a, b","say ""hi"""\r\n'
        "\r\n"
        'no,"two\nlines",plain\r\n'
        "yes,after,x\r\n"
    )
    path = _write(tmp_path, "train.csv", text)
    examples = read_text_pairs(path, pair=True, require_label=True)
    assert [(e.text_a, e.text_b, e.label, e.line) for e in examples] == [
        ("a, b", 'say "hi"', "yes", 2),
        ("two\nlines", "plain", "no", 4),
        ("after", "x", "yes", 6),
    ]
    bad = _write(tmp_path, "bad.csv", "label,text\n1,ok\n0,a,b\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 2 comma-separated columns"):
        read_text_pairs(bad, pair=False, require_label=True)
    # a .tsv keeps quotes as ordinary characters
    tsv = _write(tmp_path, "q.tsv", 'label\ttext\n1\t"a, b"\n')
    assert read_text_pairs(tsv, pair=False, require_label=True)[0].text_a == '"a, b"'
    raw = tmp_path / "u.csv"
    raw.write_bytes(b"label,text\n1,ok\n0,\xff\n")
    with pytest.raises(DataError, match=r"u\.csv:3: not valid UTF-8"):
        read_text_pairs(raw, pair=False, require_label=True)
    with pytest.raises(DataError, match=r"e\.csv:1: file is empty"):
        read_text_pairs(_write(tmp_path, "e.csv", "\n"), pair=False, require_label=True)


def test_csv_bad_quoting_names_the_record_line(tmp_path):
    path = _write(tmp_path, "open.csv", 'label,text\n1,ok\n1,"never closed\n0,x\n')
    with pytest.raises(DataError, match=r"open\.csv:3: bad CSV record \(unexpected end"):
        read_text_pairs(path, pair=False, require_label=True)
    path = _write(tmp_path, "junk.csv", 'label,text\n1,"ab"c\n')
    with pytest.raises(DataError, match=r"junk\.csv:2: bad CSV record .*double the quotes"):
        read_text_pairs(path, pair=False, require_label=True)


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


def test_ner_json_lines(tmp_path):
    text = (
        '{"words": ["John", "lives", "in", "Paris"], "ner": ["B-PER", "O", "O", "B-LOC"]}\n'
        "\n"
        '{"tokens": ["\u6211", " ", "\u4eac"], "tags": ["O", "O", "B-LOC"]}\n'
    )
    examples = read_ner(_write(tmp_path, "train.json", text), require_label=True)
    assert examples[0].tokens == ["John", "lives", "in", "Paris"] and examples[0].line == 1
    assert (examples[1].tokens, examples[1].tags, examples[1].line) == (
        ["\u6211", "\u4eac"],
        ["O", "B-LOC"],
        3,
    )
    # content starting with '{' is JSON lines whatever the suffix; tags optional when unlabeled
    plain = _write(tmp_path, "test.txt", '{"words": ["a", "b"]}\n')
    assert read_ner(plain, require_label=False)[0].tags is None
    with pytest.raises(DataError, match=r"test\.txt:1: no tags"):
        read_ner(plain, require_label=True)


def test_ner_json_lines_errors(tmp_path):
    cases = {
        '{"words": ["a"], "ner": ["O"]}\n{"words": ["a", "b"], "ner": ["O"]}\n': r":2: 2 tokens "
        "but 1 tags",
        '{"words": ["a"], "ner": ["PER"]}\n': r":1: tag 'PER' \(token 1\) is not a BIO",
        '{"words": ["a"], "ner": ["O"]}\n{"words": [\n': r":2: invalid JSON at column",
        '{"text": "a b", "ner": ["O", "O"]}\n': r":1: expected an object with a 'words'",
        '{"words": ["a"], "ner": [0]}\n': r":1: tags are integer ids but there is no "
        "label2id.json",
        '{"words": ["a", "b"], "ner": [0, "O"]}\n': r":1: 'ner' mixes integer ids",
    }
    for k, (text, pattern) in enumerate(cases.items()):
        sub = tmp_path / str(k)
        sub.mkdir()
        path = _write(sub, "data.jsonl", text)
        with pytest.raises(DataError, match=r"data\.jsonl" + pattern):
            read_ner(path, require_label=True)


def test_ner_json_integer_tags_use_label2id_beside_the_file(tmp_path):
    _write(tmp_path, "label2id.json", '{"O": 0, "B-LOC": 1, "I-LOC": 2}')
    path = _write(tmp_path, "dev.jsonl", '{"words": ["New", "York", "!"], "ner_tags": [1, 2, 0]}\n')
    (ex,) = read_ner(path, require_label=True)
    assert ex.tags == ["B-LOC", "I-LOC", "O"]
    bad = _write(tmp_path, "bad.jsonl", '{"words": ["a"], "ner_tags": [7]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: tag id 7 is not in .*label2id\.json"):
        read_ner(bad, require_label=True)


def test_ner_conll_columns(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    examples = read_ner(_write(tmp_path, "train.txt", text), require_label=True)
    assert [(e.tokens, e.tags, e.line) for e in examples] == [
        (["EU", "rejects"], ["B-ORG", "O"], 3),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"], 6),
    ]
    tabs = _write(tmp_path, "tabs.tsv", "a\tO\nb\tB-X\n\nc\tO\n")
    assert [e.tokens for e in read_ner(tabs, require_label=True)] == [["a", "b"], ["c"]]
    # one-token TSV sentences without blank lines stay TSV rows
    rows = _write(tmp_path, "rows.tsv", "a\tO\nb\tB-X\n")
    assert [e.tokens for e in read_ner(rows, require_label=True)] == [["a"], ["b"]]
    bad = _write(tmp_path, "bad.txt", "a O\nb O\n\nc O\nd PER-X\n")
    with pytest.raises(DataError, match=r"bad\.txt:5: tag 'PER-X' \(token 2\) is not a BIO"):
        read_ner(bad, require_label=True)
    bad = _write(tmp_path, "short.txt", "a O\nb O\n\nc O\nd\n")
    with pytest.raises(DataError, match=r"short\.txt:1: expected 2 tab-separated"):
        read_ner(bad, require_label=True)  # a line without a tag: not CoNLL, read as TSV
    one = _write(tmp_path, "one.txt", "I O\nsaw O\nAda B-PER\n")
    assert read_ner(one, require_label=True)[0].tags == ["O", "O", "B-PER"]


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


def _flat(qid: str, answers: dict, context: str = "The cat sat. The cat ran.") -> dict:
    return {"id": qid, "title": "t", "context": context, "question": "Who?", "answers": answers}


def test_squad_hf_flattened_data_list(tmp_path):
    doc = {
        "version": 2.0,
        "data": [
            _flat("q1", {"text": ["cat", "cat"], "answer_start": [17, 4]}),
            _flat("q2", {"text": ["sat"], "answer_start": [3]}),  # off: repaired to 8
        ],
    }
    path = _write(tmp_path, "hf.json", json.dumps(doc, indent=2))
    q1, q2 = read_squad(path, require_answers=True)
    assert (q1.qid, q1.title, q1.question) == ("q1", "t", "Who?")
    assert q1.answers == [
        {"text": "cat", "answer_start": 17},
        {"text": "cat", "answer_start": 4},
    ]
    assert q2.answers == [{"text": "sat", "answer_start": 8}]
    doc["data"][1]["answers"] = {"text": ["dog"], "answer_start": [0]}
    path = _write(tmp_path, "bad.json", json.dumps(doc, indent=2))
    with pytest.raises(DataError, match=r"bad\.json:(\d+): question 'q2': answer 'dog'") as err:
        read_squad(path, require_answers=True)
    line = int(str(err.value).split(":")[1])
    assert '"id": "q2"' in path.read_text().splitlines()[line - 1]


def test_squad_json_lines(tmp_path):
    lines = [
        _flat("a", {"text": ["ran"], "answer_start": [21]}),
        _flat("b", {"text": [], "answer_start": []}),
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    for name in ("dev.jsonl", "dev.json"):
        path = _write(tmp_path, name, text)
        a, b = read_squad(path, require_answers=False)
        assert a.answers == [{"text": "ran", "answer_start": 21}] and b.answers == []
        with pytest.raises(DataError, match=rf"{name}:2: question 'b' has no answers"):
            read_squad(path, require_answers=True)
    mismatch = _write(
        tmp_path, "m.jsonl", json.dumps(_flat("c", {"text": ["cat"], "answer_start": []}))
    )
    with pytest.raises(DataError, match=r"m\.jsonl:1: .*1 answer texts but 0 answer_start"):
        read_squad(mismatch, require_answers=True)
    broken = _write(tmp_path, "x.jsonl", json.dumps(lines[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid JSON"):
        read_squad(broken, require_answers=True)
    nocontext = _write(tmp_path, "y.jsonl", '{"id": "z", "question": "q"}\n')
    with pytest.raises(DataError, match=r"y\.jsonl:1: line has no 'context'"):
        read_squad(nocontext, require_answers=True)


def test_squad_unlabeled_split_drops_placeholder_answers(tmp_path, caplog):
    path = _squad(tmp_path, [{"text": "FAKE_ANSWER_1", "answer_start": -1}])
    with caplog.at_level(logging.WARNING, logger="e2ekit"):
        (ex,) = read_squad(path, require_answers=False)
    assert ex.answers == []
    assert "ignored 1 answer(s)" in caplog.text and "FAKE_ANSWER_1" in caplog.text


# --- predict inputs and word splitting ------------------------------------------------


def test_read_texts_formats(tmp_path, monkeypatch):
    assert read_texts(_write(tmp_path, "a.txt", "one\n\ntwo\n")) == ["one", "two"]
    assert read_texts(_write(tmp_path, "b.json", '["x", {"text": "y"}]')) == ["x", "y"]
    jsonl = _write(tmp_path, "c.jsonl", '{"text_a": "p", "text_b": "q"}\n"r"\n')
    assert read_texts(jsonl) == [("p", "q"), "r"]
    tsv = _write(tmp_path, "d.tsv", "label\ttext_a\ttext_b\n1\tp\tq\n")
    assert read_texts(tsv) == [("p", "q")]
    glue = _write(tmp_path, "g.tsv", "sentence\tlabel\nfine film\t1\n")  # SST-2's header
    assert read_texts(glue) == ["fine film"]
    pairs = _write(tmp_path, "h.tsv", "sentence1\tsentence2\tlabel\na\tb\t0\n")
    assert read_texts(pairs) == [("a", "b")]
    assert read_texts(_write(tmp_path, "i.txt", "text\nhello\n")) == ["text", "hello"]
    monkeypatch.setattr("sys.stdin", io.StringIO("s1\ns2\n"))
    assert read_texts("-") == ["s1", "s2"]
    with pytest.raises(DataError, match=r"e\.jsonl:2: invalid JSON"):
        read_texts(_write(tmp_path, "e.jsonl", '"ok"\n{bad\n'))


def test_split_words():
    assert split_words("我爱北京 abc") == ["我", "爱", "北", "京", "abc"]
    assert split_words("  Hello,  world\tagain ") == ["Hello,", "world", "again"]
    comma = "\uff0c"  # fullwidth comma: CJK punctuation is a word of its own
    assert split_words(f"在东京{comma}Tokyo") == ["在", "东", "京", comma, "Tokyo"]


# --- hostile JSON: too deep, numbers too long, other encodings --------------------------

_DEEP = "[" * 100_000 + "]" * 100_000
_LONG = "1" * 5000


def test_ner_json_lines_too_deep_or_too_long_name_the_line(tmp_path):
    ok = '{"words": ["a"], "ner": ["O"]}'
    path = _write(tmp_path, "train.jsonl", f'{ok}\n{{"words": {_DEEP}}}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: invalid JSON .*nested too deeply"):
        read_ner(path, require_label=True)
    path = _write(tmp_path, "dev.jsonl", f'{ok}\n{ok}\n{{"words": ["a"], "ner": [{_LONG}]}}\n')
    with pytest.raises(DataError, match=r"dev\.jsonl:3: invalid JSON .*number too long"):
        read_ner(path, require_label=True)


def test_squad_with_a_huge_number_or_deep_nesting_names_the_line(tmp_path):
    def doc(answers: str) -> str:
        return (
            f'{{"data": [\n{{"id": "q", "question": "?", "context": "c",\n"answers": {answers}}}]}}'
        )

    long_start = f'{{"text": ["c"], "answer_start": [{_LONG}]}}'
    path = _write(tmp_path, "train.json", doc(long_start))
    with pytest.raises(DataError, match=r"train\.json:3: invalid JSON .*number too long"):
        read_squad(path, require_answers=True)
    path = _write(tmp_path, "dev.json", doc(_DEEP))
    with pytest.raises(DataError, match=r"dev\.json:3: invalid JSON .*nested too deeply"):
        read_squad(path, require_answers=True)


def test_squad_answer_start_as_a_non_ascii_digit_is_repaired(tmp_path):
    item = {
        "id": "q",
        "question": "?",
        "context": "ab c",
        "answers": [{"text": "c", "answer_start": "\u00b2"}],
    }
    path = _write(tmp_path, "train.json", json.dumps({"data": [item]}))
    (ex,) = read_squad(path, require_answers=True)
    assert ex.answers == [{"text": "c", "answer_start": 3}]


def test_predict_json_inputs_not_utf8_or_too_deep_name_the_file(tmp_path):
    path = tmp_path / "in.json"
    path.write_bytes('[\n"caf\u00e9"]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"in\.json:2: not UTF-8"):
        read_texts(path)
    path.write_text(f"[\n\n{_DEEP}]")
    with pytest.raises(DataError, match=r"in\.json:3: invalid JSON .*nested too deeply"):
        read_texts(path)
    path = _write(tmp_path, "in.jsonl", f'"a"\n{_LONG}\n')
    with pytest.raises(DataError, match=r"in\.jsonl:2: invalid JSON .*number too long"):
        read_texts(path)
