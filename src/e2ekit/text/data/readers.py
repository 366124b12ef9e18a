"""Readers for the text kit's file formats (ERNIE/PaddleNLP TSV, NER TSV, SQuAD JSON).

Every problem is a ``DataError`` naming ``file:line`` and the fix, because a bad row in a
100k-line file is otherwise found only by a crash deep inside training.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2ekit.core.errors import ConfigError, DataError, did_you_mean

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


def _read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, text) for every non-empty line; BOM and CR stripped.

    Decoding line by line lets a bad byte be reported with its line number.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p} (check the path in data.train/dev/test)")
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for i, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{p}:{i}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                "re-save the file as UTF-8"
            ) from None
        text = text.rstrip("\r")
        if text.strip():
            out.append((i, text))
    return out


def read_text_pairs(path: str | Path, *, pair: bool, require_label: bool) -> list[TextExample]:
    """Read a cls/pair TSV whose header names ``text_a``, ``text_b`` and ``label`` (any order).

    Quotes are ordinary characters (like csv.QUOTE_NONE); extra columns such as ``qid``
    are ignored.
    """
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}:1: file is empty; expected a header row like 'text_a\\tlabel'")
    head_line, head = lines[0]
    columns = head.split("\t")
    needed = ["text_a"] + (["text_b"] if pair else []) + (["label"] if require_label else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        hint = did_you_mean(missing[0], columns)
        example = "\\t".join(needed)
        raise DataError(
            f"{path}:{head_line}: header has no column {', '.join(missing)}{hint}; "
            f"found {columns}; the first row must name the tab-separated columns, "
            f"e.g. '{example}'"
        )
    dup = sorted({c for c in columns if columns.count(c) > 1 and c})
    if dup:
        raise DataError(f"{path}:{head_line}: header names column {dup[0]} twice; rename one")
    ia = columns.index("text_a")
    ib = columns.index("text_b") if pair else None
    il = columns.index("label") if "label" in columns else None
    examples = []
    for n, row in lines[1:]:
        fields = row.split("\t")
        if len(fields) != len(columns):
            raise DataError(
                f"{path}:{n}: expected {len(columns)} tab-separated columns "
                f"({', '.join(columns)}) but found {len(fields)}; remove tabs inside the text "
                "or fill the missing column"
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


def read_ner(path: str | Path, *, require_label: bool) -> list[NerExample]:
    """Read ``tokens<TAB>tags`` rows (space- or '\\x02'-separated); a header row is optional.

    With '\\x02' separators a token may be whitespace-only; it is dropped with its tag
    since no tokenizer gives it a sub-token.
    """
    lines = _read_lines(path)
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
        if tags is not None:
            if len(tags) != len(tokens):
                raise DataError(
                    f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags; "
                    "give exactly one tag per token"
                )
            for k, tag in enumerate(tags, start=1):
                if not NER_TAG.match(tag):
                    raise DataError(
                        f"{path}:{n}: tag '{tag}' (token {k}) is not a BIO/IOBES tag; "
                        "use O or B-/I-/E-/S- plus a type, e.g. B-PER"
                    )
            keep = [i for i, t in enumerate(tokens) if t.strip()]
            tags = [tags[i] for i in keep]
        tokens = [t for t in tokens if t.strip()]
        if not tokens:
            raise DataError(f"{path}:{n}: no tokens; drop the row or fill text_a")
        examples.append(NerExample(tokens=tokens, tags=tags, line=n))
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


def read_squad(path: str | Path, *, require_answers: bool) -> list[MrcExample]:
    """Read SQuAD v1.1 / CMRC2018 JSON, repairing answer_start values that are off.

    Wrong offsets are common in translated or hand-made sets; the answer text is looked up
    in the context (nearest occurrence) and the number of repairs is logged.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p} (check the path in data.train/dev/test)")
    try:
        raw = p.read_text(encoding="utf-8-sig")
        doc = json.loads(raw)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}:1: not valid UTF-8 ({e.reason}); re-save as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{p}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}; fix the file "
            '(expected SQuAD v1.1: {"data": [{"paragraphs": [...]}]})'
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(
            f"{p}:1: not SQuAD v1.1 JSON: the top level needs a 'data' list of articles "
            "with 'paragraphs' -> 'context', 'qas'"
        )
    examples: list[MrcExample] = []
    seen: set[str] = set()
    fixed = 0
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{p}:1: data[{a}] has no 'paragraphs' list; fix the article")
        for g, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{g}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise DataError(f"{p}:1: {where} has no 'context' string; fix the paragraph")
            context = para["context"]
            for q, qa in enumerate(para.get("qas") or []):
                qid = str(qa.get("id", "")) if isinstance(qa, dict) else ""
                if not qid or not isinstance(qa.get("question"), str):
                    raise DataError(
                        f"{p}:1: {where}.qas[{q}] needs an 'id' and a 'question'; fix the entry"
                    )
                at = f"{p}:{_line_of(raw, qid)}"
                if qid in seen:
                    raise DataError(f"{at}: question id '{qid}' appears twice; ids must be unique")
                seen.add(qid)
                answers = []
                for ans in qa.get("answers") or []:
                    text = ans.get("text") if isinstance(ans, dict) else None
                    if not isinstance(text, str) or not text.strip():
                        raise DataError(f"{at}: question '{qid}' has an answer without text")
                    given = ans.get("answer_start")
                    if isinstance(given, str) and given.isdigit():
                        given = int(given)
                    start = _fix_answer(context, text, given)
                    if start is None and text.strip() != text:
                        text = text.strip()
                        start = _fix_answer(context, text, given)
                    if start is None:
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
      ``text_a``, that column is used (plus ``text_b`` for pairs).
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
            items = json.loads(p.read_text(encoding="utf-8-sig"))
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
                    out.append(_text_of(json.loads(s), f"{name}:{n}"))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{name}:{n}: invalid JSON at column {e.colno}: {e.msg}"
                    ) from None
            return out
    if lines and "text_a" in lines[0][1].split("\t"):
        columns = lines[0][1].split("\t")
        ia = columns.index("text_a")
        ib = columns.index("text_b") if "text_b" in columns else None
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
