"""Readers for the text kit's file formats.

- cls/pair: TSV (ERNIE/PaddleNLP, GLUE) or quoted CSV with a header row.
- ner: ``tokens<TAB>tags`` TSV, JSON lines ``{"words": [...], "ner": [...]}``, or CoNLL
  columns (one ``token tag`` per line, a blank line between sentences).
- mrc: SQuAD v1.1 / CMRC2018 JSON, or Hugging Face datasets' flattened SQuAD (a ``data``
  list or JSON lines of ``{id, question, context, answers: {text, answer_start}}``).

Every problem is a ``DataError`` naming ``file:line`` and the fix, because a bad row in a
100k-line file is otherwise found only by a crash deep inside training.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2ekit.core.errors import ConfigError, DataError, did_you_mean
from e2ekit.core.textio import loads_json, read_utf8

log = logging.getLogger("e2ekit")

NER_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")
# Han ideographs (BERT's _is_chinese_char ranges), CJK punctuation, kana, fullwidth forms:
# each becomes its own word, as in character-level Chinese NER corpora (MSRA, People's Daily).
_CJK = (
    "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
)
_WORDS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


@dataclass
class TextExample:
    """One cls/pair row; ``label`` is the raw string (None when the file has no labels)."""

    text_a: str
    text_b: str | None
    label: str | None
    line: int


@dataclass
class NerExample:
    """One NER sentence: pre-split tokens and their BIO/IOBES tags (None for unlabeled data)."""

    tokens: list[str]
    tags: list[str] | None
    line: int


@dataclass
class MrcExample:
    """One SQuAD question; ``answers`` holds verified ``{"text", "answer_start"}`` dicts."""

    qid: str
    question: str
    context: str
    answers: list[dict]
    title: str = ""


def _read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p} (check the path in data.train/dev/test)")
    raw = p.read_bytes()
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def _utf8_error(path: str | Path, line: int, e: UnicodeDecodeError, at: int) -> DataError:
    return DataError(
        f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {at}); re-save the file as UTF-8"
    )


def _read_lines(path: str | Path, *, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, text) for every non-empty line; BOM and CR stripped.

    Decoding line by line lets a bad byte be reported with its line number. With
    ``keep_blank`` empty lines come back too (CoNLL separates sentences with them).
    """
    out = []
    for i, chunk in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _utf8_error(path, i, e, e.start) from None
        text = text.rstrip("\r")
        if keep_blank or text.strip():
            out.append((i, text))
    return out


def _read_csv(path: str | Path) -> list[tuple[int, list[str]]]:
    """(first line, fields) per non-blank CSV record: comma-separated, standard quoting
    (a field in double quotes may hold commas and line breaks; ``""`` is a quote)."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise _utf8_error(path, raw.count(b"\n", 0, e.start) + 1, e, e.start - line_start) from None
    # strict: an unclosed quote is an error, not the rest of the file read as one field
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(
                f"{path}:{first}: bad CSV record ({e}); quote fields that hold commas, "
                'quotes or line breaks, and double the quotes inside them ("")'
            ) from None
        if any(f.strip() for f in fields):
            rows.append((first, fields))
    return rows


TEXT_COLUMNS = ("text_a", "text_b", "label")
# Header names read without data.columns, best first (GLUE/HF use sentence1/sentence2).
COLUMN_ALIASES = {
    "text_a": ("text_a", "sentence1", "sentence", "text"),
    "text_b": ("text_b", "sentence2"),
    "label": ("label", "labels"),
}


def _find_column(header: list[str], candidates: Sequence[str]) -> int | None:
    """Index of the first candidate in ``header``: exact, else ignoring case and spaces."""
    for c in candidates:
        if c in header:
            return header.index(c)
    folded = [h.strip().casefold() for h in header]
    for c in candidates:
        if c.strip().casefold() in folded:
            return folded.index(c.strip().casefold())
    return None


def _column_indices(
    path: str | Path,
    line: int,
    header: list[str],
    *,
    pair: bool,
    require_label: bool,
    columns: Mapping[str, str] | None,
    sep: str,
) -> dict[str, int | None]:
    """Where text_a/text_b/label sit: ``columns`` (our name -> header name) or aliases."""
    mapping = dict(columns or {})
    for key in mapping:
        if key not in TEXT_COLUMNS:
            raise ConfigError(
                f"data.columns: unknown key '{key}'{did_you_mean(key, TEXT_COLUMNS)}; keys are "
                "text_a, text_b and label, each mapped to a header name of the file"
            )
    wanted = ["text_a"] + (["text_b"] if pair else []) + ["label"]
    needed = ["text_a"] + (["text_b"] if pair else []) + (["label"] if require_label else [])
    found: dict[str, int | None] = {}
    missing = []
    for name in wanted:
        given = mapping.get(name)
        idx = _find_column(header, [given] if given else COLUMN_ALIASES[name])
        if idx is None and name in needed:
            missing.append(name)
        found[name] = idx
    if missing:
        name = missing[0]
        if mapping.get(name):
            raise DataError(
                f"{path}:{line}: header has no column '{mapping[name]}' (data.columns.{name})"
                f"{did_you_mean(mapping[name], header)}; found {header}"
            )
        hint = did_you_mean(name, header)
        example = sep.join(needed).replace("\t", "\\t")
        raise DataError(
            f"{path}:{line}: header has no column {', '.join(missing)}{hint}; found {header}; "
            f"the first row must name the columns, e.g. '{example}' (also accepted: "
            "sentence1/sentence/text, sentence2, labels), or map them to this header with "
            f"data.columns, e.g. {{{name}: <column name>}}"
        )
    used = [header[i] for i in found.values() if i is not None]
    dup = sorted({c for c in used if header.count(c) > 1 and c})
    if dup:
        raise DataError(f"{path}:{line}: header names column {dup[0]} twice; rename one")
    same = [n for n in wanted if found[n] is not None and list(found.values()).count(found[n]) > 1]
    if same:
        raise DataError(
            f"{path}:{line}: {' and '.join(same)} both read column '{header[found[same[0]]]}'; "
            "map each to its own column in data.columns"
        )
    return found


def read_text_pairs(
    path: str | Path,
    *,
    pair: bool,
    require_label: bool,
    columns: Mapping[str, str] | None = None,
) -> list[TextExample]:
    """Read a cls/pair table whose header names ``text_a``, ``text_b`` and ``label``.

    Columns may come in any order; extra ones (``qid``, ``#1 ID``) are ignored. Without
    ``columns`` the GLUE names sentence1/sentence2 (and sentence, text, labels) are
    accepted too; ``columns`` maps our names to the file's, e.g.
    ``{"text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}``.
    ``.csv`` files are comma-separated with standard quoting; anything else is TSV where
    quotes are ordinary characters (like csv.QUOTE_NONE).
    """
    is_csv = Path(path).suffix.lower() == ".csv"
    if is_csv:
        rows = _read_csv(path)
        sep, kind = ",", "comma-separated"
    else:
        rows = [(n, line.split("\t")) for n, line in _read_lines(path)]
        sep, kind = "\t", "tab-separated"
    if not rows:
        example = "text_a,label" if is_csv else "text_a\\tlabel"
        raise DataError(f"{path}:1: file is empty; expected a header row like '{example}'")
    head_line, header = rows[0]
    found = _column_indices(
        path,
        head_line,
        header,
        pair=pair,
        require_label=require_label,
        columns=columns,
        sep=sep,
    )
    ia, ib, il = found["text_a"], found.get("text_b"), found["label"]
    assert ia is not None
    fix = (
        "quote fields that contain commas"
        if is_csv
        else "remove tabs inside the text or fill the missing column"
    )
    examples = []
    for n, fields in rows[1:]:
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{n}: expected {len(header)} {kind} columns "
                f"({', '.join(header)}) but found {len(fields)}; {fix}"
            )
        label = fields[il].strip() if il is not None else None
        if require_label and not label:
            raise DataError(f"{path}:{n}: empty label; fill the label column or drop the row")
        examples.append(
            TextExample(
                text_a=fields[ia],
                text_b=fields[ib] if ib is not None else None,
                label=label or None,
                line=n,
            )
        )
    return examples


def _split_field(field: str) -> list[str]:
    """PaddleNLP MSRA files join with '\\x02'; everything else is space-separated."""
    return field.split("\x02") if "\x02" in field else field.split()


def _check_tag(path: str | Path, n: int, tag: str, k: int) -> None:
    if not NER_TAG.match(tag):
        raise DataError(
            f"{path}:{n}: tag '{tag}' (token {k}) is not a BIO/IOBES tag; "
            "use O or B-/I-/E-/S- plus a type, e.g. B-PER"
        )


def _ner_example(path: str | Path, n: int, tokens: list[str], tags: list[str] | None) -> NerExample:
    """Check one sentence (one tag per token, valid tags); blank tokens go with their tag."""
    if tags is not None:
        if len(tags) != len(tokens):
            raise DataError(
                f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags; "
                "give exactly one tag per token"
            )
        for k, tag in enumerate(tags, start=1):
            _check_tag(path, n, tag, k)
        tags = [tag for tag, t in zip(tags, tokens, strict=True) if t.strip()]
    tokens = [t for t in tokens if t.strip()]
    if not tokens:
        raise DataError(f"{path}:{n}: no tokens; drop the row or fill in the tokens")
    return NerExample(tokens=tokens, tags=tags, line=n)


NER_WORD_KEYS = ("words", "tokens")
NER_TAG_KEYS = ("ner", "tags", "labels", "ner_tags")


def _id2label(path: Path, n: int) -> dict[int, str]:
    """Tag names for integer tags, from the label2id.json next to the data file."""
    file = path.with_name("label2id.json")
    if not file.is_file():
        raise DataError(
            f"{path}:{n}: tags are integer ids but there is no label2id.json next to the file "
            'to name them; add one (e.g. {"O": 0, "B-PER": 1, "I-PER": 2}) or write the tags '
            "as strings"
        )
    try:
        table = loads_json(file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{file}:1: not valid JSON ({e}); fix the label2id file") from None
    if not isinstance(table, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in table.values()
    ):
        raise DataError(f'{file}:1: expected an object of tag -> id, e.g. {{"O": 0, "B-PER": 1}}')
    return {v: str(k) for k, v in table.items()}


def _read_ner_json(path: Path, lines: list[tuple[int, str]], require_label: bool) -> list:
    """JSON lines: ``{"words"|"tokens": [...], "ner"|"tags"|"labels"|"ner_tags": [...]}``."""
    id2label: dict[int, str] | None = None
    examples = []
    for n, line in lines:
        try:
            item = loads_json(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{n}: invalid JSON at column {e.colno}: {e.msg}; write one object per "
                'line, e.g. {"words": ["John", "lives"], "ner": ["B-PER", "O"]}'
            ) from None
        key = next((k for k in NER_WORD_KEYS if isinstance(item, dict) and k in item), None)
        words = item.get(key) if key else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(
                f"{path}:{n}: expected an object with a 'words' (or 'tokens') list of strings; "
                "fix the line"
            )
        tkey = next((k for k in NER_TAG_KEYS if k in item), None)
        raw = item.get(tkey) if tkey else None
        tags = None
        if raw is not None:
            if not isinstance(raw, list):
                raise DataError(f"{path}:{n}: '{tkey}' must be a list with one tag per word")
            ints = [isinstance(t, int) and not isinstance(t, bool) for t in raw]
            if any(ints):
                if not all(ints):
                    raise DataError(
                        f"{path}:{n}: '{tkey}' mixes integer ids and other values; use one kind"
                    )
                if id2label is None:
                    id2label = _id2label(path, n)
                bad = next((t for t in raw if t not in id2label), None)
                if bad is not None:
                    raise DataError(
                        f"{path}:{n}: tag id {bad} is not in {path.with_name('label2id.json')} "
                        f"(ids {min(id2label)}..{max(id2label)}); fix the id or the table"
                    )
                tags = [id2label[t] for t in raw]
            elif not all(isinstance(t, str) for t in raw):
                raise DataError(f"{path}:{n}: '{tkey}' must hold tag strings (or integer ids)")
            else:
                tags = list(raw)
        if require_label and tags is None:
            raise DataError(
                f"{path}:{n}: no tags; give a 'ner' (or 'tags'/'labels') list, one per word"
            )
        examples.append(_ner_example(path, n, list(words), tags))
    return examples


def _is_conll(lines: list[tuple[int, str]]) -> bool:
    """CoNLL columns: lines of ``token [other columns] tag``, sentences split by blank
    lines. A labelled TSV row has a tab and several tokens, so it never looks like this;
    a file of one sentence needs a tag at the end of every line."""
    rows = [i for i, (_, s) in enumerate(lines) if s.strip() and not s.startswith("-DOCSTART-")]
    content = [lines[i][1] for i in rows[:200]]
    if not content or content[0].split("\t")[0].strip() == "text_a":
        return False
    if any(len(s.split()) < 2 or "\x02" in s for s in content):
        return False
    if not NER_TAG.match(content[0].split()[-1]):
        return False
    tabbed = any("\t" in s for s in content)
    if tabbed and not all(len(s.split("\t")[0].split()) == 1 for s in content):
        return False
    if any(not s.strip() for _, s in lines[rows[0] : rows[-1]]):
        return True
    return not tabbed and all(NER_TAG.match(s.split()[-1]) for s in content)


def _read_conll(path: str | Path, lines: list[tuple[int, str]]) -> list[NerExample]:
    examples: list[NerExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for n, s in [*lines, (0, "")]:
        if not s.strip() or s.startswith("-DOCSTART-"):
            if tokens:
                examples.append(_ner_example(path, start, tokens, tags))
            tokens, tags = [], []
            continue
        fields = s.split("\t") if "\t" in s else s.split()
        if len(fields) < 2 or not fields[-1].strip():
            raise DataError(
                f"{path}:{n}: expected 'token tag' (CoNLL: one token per line, a blank line "
                "between sentences); add the tag"
            )
        if not tokens:
            start = n
        tokens.append(fields[0].strip())
        tags.append(fields[-1].strip())
        _check_tag(path, n, tags[-1], len(tags))
    return examples


def read_ner_words(path: str | Path) -> list[list[str]] | None:
    """Pre-split sentences of a file in a word-level format ``read_ner`` reads (CoNLL
    columns, JSON lines with a ``words``/``tokens`` list), tags ignored; None for plain
    texts, which ``predict`` splits itself. So predict reads the file train and eval read."""
    p = Path(path)
    lines = _read_lines(path, keep_blank=True)
    content = [(n, s) for n, s in lines if s.strip()]
    if not content:
        return None
    if p.suffix.lower() == ".jsonl" or content[0][1].lstrip().startswith("{"):
        try:
            first = loads_json(content[0][1])
        except json.JSONDecodeError:
            return None
        if not (isinstance(first, dict) and any(k in first for k in NER_WORD_KEYS)):
            return None
        return [ex.tokens for ex in _read_ner_json(p, content, require_label=False)]
    if _is_conll(lines):
        return [ex.tokens for ex in _read_conll(path, lines)]
    return None


def read_ner(path: str | Path, *, require_label: bool) -> list[NerExample]:
    """Read NER sentences; the format is found from the suffix and the content.

    - TSV ``tokens<TAB>tags`` rows (space- or '\\x02'-separated); a header row is optional.
      With '\\x02' separators a token may be whitespace-only; it is dropped with its tag
      since no tokenizer gives it a sub-token.
    - JSON lines (``.json``/``.jsonl``, or lines starting with '{'): ``{"words": [...],
      "ner": [...]}`` (also ``tokens`` and ``tags``/``labels``/``ner_tags``). Integer tags
      are named by a ``label2id.json`` beside the file.
    - CoNLL columns (GermEval, CoNLL-2003): ``token ... tag`` per line, blank line between
      sentences, ``-DOCSTART-`` lines skipped.
    """
    p = Path(path)
    lines = _read_lines(path, keep_blank=True)
    content = [(n, s) for n, s in lines if s.strip()]
    if content and (
        p.suffix.lower() in (".json", ".jsonl") or content[0][1].lstrip().startswith("{")
    ):
        return _read_ner_json(p, content, require_label)
    if _is_conll(lines):
        return _read_conll(path, lines)
    lines = content
    if lines and lines[0][1].split("\t")[0].strip() == "text_a":
        lines = lines[1:]
    examples = []
    for n, row in lines:
        fields = row.split("\t")
        if len(fields) > 2 or (require_label and len(fields) != 2):
            raise DataError(
                f"{path}:{n}: expected 2 tab-separated columns (text_a, label) but found "
                f"{len(fields)}; write tokens and tags as two columns, each space-separated"
            )
        tokens = _split_field(fields[0])
        tags = _split_field(fields[1]) if len(fields) == 2 and fields[1].strip() else None
        if require_label and tags is None:
            raise DataError(f"{path}:{n}: empty label column; give one tag per token")
        examples.append(_ner_example(path, n, tokens, tags))
    return examples


def _fix_answer(context: str, text: str, start: object) -> int | None:
    """The verified start of ``text`` in ``context``: as given, else the nearest occurrence."""
    if isinstance(start, int) and context[start : start + len(text)] == text:
        return start
    hits = [m.start() for m in re.finditer(re.escape(text), context)]
    if not hits:
        return None
    anchor = start if isinstance(start, int) else 0
    return min(hits, key=lambda h: abs(h - anchor))


def _line_of(raw: str, qid: str) -> int:
    """The line where question ``qid`` is written (JSON errors have no row otherwise)."""
    m = re.search(r'"id"\s*:\s*' + re.escape(json.dumps(qid, ensure_ascii=False)), raw)
    if m is None:
        m = re.search(re.escape(json.dumps(qid, ensure_ascii=False)), raw)
    return raw.count("\n", 0, m.start()) + 1 if m else 1


_SQUAD_SHAPE = (
    "expected SQuAD v1.1 ({'data': [{'paragraphs': [{'context', 'qas'}]}]}) or the flattened "
    "Hugging Face style ({'data': [{'id', 'question', 'context', 'answers': {'text': [...], "
    "'answer_start': [...]}}]}, or one such item per line)"
)


def _answer_list(answers: object, at: str, qid: str) -> list:
    """SQuAD answers as a list of dicts; HF's ``{text: [...], answer_start: [...]}`` too."""
    if answers is None:
        return []
    if isinstance(answers, dict):
        texts, starts = answers.get("text") or [], answers.get("answer_start") or []
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise DataError(
                f"{at}: question '{qid}': answers.text and answers.answer_start must be lists"
            )
        if len(texts) != len(starts):
            raise DataError(
                f"{at}: question '{qid}': {len(texts)} answer texts but {len(starts)} "
                "answer_start values; give one start per text"
            )
        return [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
    if isinstance(answers, list):
        return answers
    raise DataError(f"{at}: question '{qid}': 'answers' must be a list or {{text, answer_start}}")


def _squad_items(p: Path, raw: str) -> Iterable[tuple[str, str, str, dict]]:
    """(where, title, context, qa) for every question, whatever the layout."""
    doc: object = None
    lines: list[tuple[int, str]] | None = None
    if p.suffix.lower() == ".jsonl":
        lines = [(n, s) for n, s in enumerate(raw.split("\n"), 1) if s.strip()]
    else:
        try:
            doc = loads_json(raw)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data" and raw.lstrip().startswith("{"):
                lines = [(n, s) for n, s in enumerate(raw.split("\n"), 1) if s.strip()]
            else:
                raise DataError(
                    f"{p}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}; fix the file "
                    '(expected SQuAD v1.1: {"data": [{"paragraphs": [...]}]})'
                ) from None
    if lines is not None:  # JSON lines of flattened items
        for n, s in lines:
            try:
                item = loads_json(s)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{p}:{n}: invalid JSON at column {e.colno}: {e.msg}; JSON lines need one "
                    "complete question object per line"
                ) from None
            if not isinstance(item, dict) or not isinstance(item.get("context"), str):
                raise DataError(f"{p}:{n}: line has no 'context' string; {_SQUAD_SHAPE}")
            yield f"{p}:{n}", str(item.get("title", "")), item["context"], item
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{p}:1: not SQuAD JSON: the top level needs a 'data' list; {_SQUAD_SHAPE}")
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        if isinstance(article, dict) and "paragraphs" not in article and "context" in article:
            if not isinstance(article["context"], str):
                raise DataError(f"{p}:1: data[{a}] has no 'context' string; fix the item")
            yield "", title, article["context"], article  # flattened (HF datasets) item
            continue
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(
                f"{p}:1: data[{a}] has neither a 'paragraphs' list nor a 'context'; {_SQUAD_SHAPE}"
            )
        for g, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{g}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise DataError(f"{p}:1: {where} has no 'context' string; fix the paragraph")
            for q, qa in enumerate(para.get("qas") or []):
                if not isinstance(qa, dict):
                    raise DataError(f"{p}:1: {where}.qas[{q}] is not an object; fix the entry")
                yield f"{where}.qas[{q}]", title, para["context"], qa


def read_squad(path: str | Path, *, require_answers: bool) -> list[MrcExample]:
    """Read SQuAD v1.1 / CMRC2018 JSON or HF's flattened SQuAD (a ``data`` list or JSON
    lines of ``{id, question, context, answers: {text: [...], answer_start: [...]}}``).

    Wrong offsets are common in translated or hand-made sets; the answer text is looked up
    in the context (nearest occurrence) and the number of repairs is logged. Without
    ``require_answers`` (a test split) answers missing from the context, such as CMRC's
    FAKE_ANSWER placeholders, are dropped with a warning instead of failing.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p} (check the path in data.train/dev/test)")
    raw = read_utf8(p, DataError)
    examples: list[MrcExample] = []
    seen: set[str] = set()
    fixed = dropped = 0
    first_dropped = ""
    for where, title, context, qa in _squad_items(p, raw):
        qid = str(qa.get("id", ""))
        if not qid or not isinstance(qa.get("question"), str):
            name = f"{where}: the line" if where.startswith(str(p)) else f"{p}:1: {where or 'item'}"
            raise DataError(f"{name} needs an 'id' and a 'question'; fix the entry")
        at = where if where.startswith(str(p)) else f"{p}:{_line_of(raw, qid)}"
        if qid in seen:
            raise DataError(f"{at}: question id '{qid}' appears twice; ids must be unique")
        seen.add(qid)
        answers = []
        for ans in _answer_list(qa.get("answers"), at, qid):
            text = ans.get("text") if isinstance(ans, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{at}: question '{qid}' has an answer without text")
            given = ans.get("answer_start")
            if isinstance(given, str) and given.isdecimal() and len(given) <= 18:
                given = int(given)
            start = _fix_answer(context, text, given)
            if start is None and text.strip() != text:
                text = text.strip()
                start = _fix_answer(context, text, given)
            if start is None:
                if not require_answers:
                    dropped += 1
                    first_dropped = first_dropped or f"{at}: question '{qid}': '{text[:40]}'"
                    continue
                raise DataError(
                    f"{at}: question '{qid}': answer '{text[:60]}' does not occur in "
                    "its context; fix the answer text or drop the question"
                )
            fixed += start != given
            answers.append({"text": text, "answer_start": start})
        if require_answers and not answers:
            raise DataError(
                f"{at}: question '{qid}' has no answers; training and evaluation need "
                "at least one (SQuAD v2 unanswerable questions are not supported)"
            )
        examples.append(MrcExample(qid, qa["question"], context, answers, title))
    if fixed:
        log.warning("%s: repaired answer_start of %d answer(s) by locating the text", p, fixed)
    if dropped:
        log.warning(
            "%s: ignored %d answer(s) that do not occur in their context (first: %s)",
            p,
            dropped,
            first_dropped,
        )
    return examples


def _text_of(item: object, where: str) -> str | tuple[str, str]:
    """A predict input: a string, or an object with text/text_a (and optional text_b)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        text = item.get("text_a", item.get("text"))
        if isinstance(text, str):
            b = item.get("text_b")
            return (text, b) if isinstance(b, str) else text
    raise DataError(f"{where}: expected a string or an object with a 'text' field; fix the item")


def read_texts(path_or_dash: str | Path) -> list[str | tuple[str, str]]:
    """Read inputs for ``predict``; pairs come back as ``(text_a, text_b)`` tuples.

    - ``-``: stdin, read like a plain text file.
    - ``.json``: a list of strings or of objects with ``text``/``text_a`` (+ ``text_b``).
    - ``.jsonl``: one such string or object per line.
    - anything else: one text per line; if the first line is a TSV header naming
      ``text_a`` (or, with several columns, any name train reads for it: ``sentence1``,
      ``sentence``, ``text``), that column is used (plus ``text_b`` / ``sentence2``).
    """
    name = str(path_or_dash)
    if name == "-":
        lines = [
            (i, s.rstrip("\r\n"))
            for i, s in enumerate(sys.stdin.read().lstrip("\ufeff").split("\n"), 1)
        ]
        lines = [(i, s) for i, s in lines if s.strip()]
        name = "<stdin>"
    elif Path(name).suffix.lower() == ".json":
        p = Path(name)
        if not p.is_file():
            raise DataError(f"no such file: {p}")
        try:
            items = loads_json(read_utf8(p, DataError))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}") from None
        if not isinstance(items, list):
            raise DataError(f"{p}:1: expected a JSON list of texts or {{'text': ...}} objects")
        return [_text_of(x, f"{p}:1: item {k}") for k, x in enumerate(items)]
    else:
        lines = _read_lines(name)
        if Path(name).suffix.lower() == ".jsonl":
            out = []
            for n, s in lines:
                try:
                    out.append(_text_of(loads_json(s), f"{name}:{n}"))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{name}:{n}: invalid JSON at column {e.colno}: {e.msg}"
                    ) from None
            return out
    columns = lines[0][1].split("\t") if lines else []
    # a header as train reads it: text_a alone, or with a tab, any of its aliases (sentence, ...)
    ia = _find_column(columns, COLUMN_ALIASES["text_a"]) if len(columns) > 1 else None
    if ia is None and columns == ["text_a"]:
        ia = 0
    if ia is not None:
        ib = _find_column(columns, COLUMN_ALIASES["text_b"])
        out: list[str | tuple[str, str]] = []
        for n, s in lines[1:]:
            fields = s.split("\t")
            if len(fields) != len(columns):
                raise DataError(
                    f"{name}:{n}: expected {len(columns)} tab-separated columns "
                    f"({', '.join(columns)}) but found {len(fields)}; fix the row"
                )
            out.append((fields[ia], fields[ib]) if ib is not None else fields[ia])
        return out
    return [s for _, s in lines]


def build_label_map(
    labels: Iterable[str | None], label_list: Sequence[str] | None = None
) -> list[str]:
    """Ordered label names: ``label_list`` when configured, else the sorted labels seen.

    All-numeric labels sort numerically ("2" before "10") so ids match the usual 0..N-1.
    """
    if label_list:
        names = [str(x) for x in label_list]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ConfigError(f"task.labels lists '{dup[0]}' twice; each label must be unique")
        return names
    unique = {x for x in labels if x is not None}
    if not unique:
        raise DataError("no labels found in the training data; check the label column")
    if all(re.fullmatch(r"-?\d+", x) for x in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def check_labels(
    examples: Iterable[TextExample | NerExample], names: Sequence[str], path: str | Path
) -> None:
    """Fail on the first label (or NER tag) not in ``names``, e.g. a dev-only class."""
    known = set(names)
    for ex in examples:
        values = ex.tags if isinstance(ex, NerExample) else [ex.label]
        for value in values or []:
            if value is not None and value not in known:
                shown = ", ".join(names) if len(names) <= 30 else ", ".join(names[:30]) + ", ..."
                raise DataError(
                    f"{path}:{ex.line}: unknown label '{value}'{did_you_mean(value, names)}; "
                    f"known labels: {shown}; add it to task.labels or fix the row"
                )


def split_words(text: str) -> list[str]:
    """Split raw text into NER words: on whitespace, and each CJK character on its own."""
    return _WORDS.findall(text)
