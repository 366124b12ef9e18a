"""Property-based fuzzing of every reader of user data files, kit by kit.

Each reader gets files that hypothesis draws valid and then corrupts: truncated at a byte,
bytes flipped, re-encoded (Latin-1, UTF-16, a BOM), a line of megabytes, NUL bytes,
'nan'/'inf'/'1e400', integers past int64, missing or extra columns, an empty file, JSON
of the wrong shape, labels out of range, paths that escape the data folder or are missing.
The property: the reader returns data that holds its invariants (finite numbers, labels
in range, boxes inside their image, every counted row accounted for), or raises an
``E2EError`` whose message names the file (and an existing line, for line-oriented
formats), or counts the rows it skips where it documents skipping them. Any other
exception, a hang or wrong data passed on silently is a crash, reported with the first
failing example. Each example runs in a forked child under a timer, so a native decoder
that segfaults or hangs costs one example, not the run; examples are drawn from a fixed
seed (``derandomize``) and no example database is kept, so runs repeat exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import os
import re
import select
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reliability.common import Row, Timer, print_rows

PART = "fuzz"
FULL_EXAMPLES = 200
QUICK_EXAMPLES = 20
TIMEOUT_S = 20.0

# --- hostile values ----------------------------------------------------------------------

# Numbers (and non-numbers) that a reader must refuse or handle, never pass on as NaN.
HOSTILE_NUM = (
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e39",
    "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1" * 30,
    "-1", "", " ", "\x00", "1.5", "0x1f", "1_0", "\u0663", "\u00b2", "abc", "1e", "--1",
)  # fmt: skip
# Text fields: separators, quotes, control bytes, look-alike tags.
HOSTILE_TEXT = (
    "", " ", "\t", ",", '"', '"a', "a\"b", "\x00", "\x1f", "\x02", "\\", "{", "é", "中文",
    "B-", "X-PER", "O O", "-DOCSTART-", "text_a", "label", "nan",
)  # fmt: skip
# Paths from list files and annotations: escaping, absolute, missing, empty, too long.
HOSTILE_PATH = (
    "../outside.png", "../../../../etc/passwd", "/nonexistent/a.png", "", " ", "dir/",
    "a\x00b.png", "x" * 300 + ".png", "missing.png", "~/a.png", "img/../img/0.png",
)  # fmt: skip
HOSTILE_JSON: tuple[Any, ...] = (
    float("nan"), float("inf"), -float("inf"), 1e308, 2**63, 2**64, -(2**63) - 1, 10**30,
    -1, 0, 1.5, True, False, None, "", "x", "1", "nan", [], {}, [1, 2], {"a": 1}, [[]],
)  # fmt: skip
DEEP = "\x00deep"  # placeholders swapped in after json.dumps
BIGINT = "\x00bigint"


class Hang(BaseException):
    """Raised by the timer: a BaseException so a reader's ``except Exception`` cannot eat it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(*_: object) -> None:
        raise Hang(f"no answer in {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- drawing -----------------------------------------------------------------------------


class Draw:
    """Short names over hypothesis' ``data.draw`` for the generators below."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, items: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(items))

    def chance(self, percent: int) -> bool:
        return self.int(0, 99) < percent

    def number(self, lo: float = -1e3, hi: float = 1e3) -> float:
        return self.data.draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))

    def word(self) -> str:
        return self.data.draw(st.text("abcdxyz\u00e9\u4e2d", min_size=1, max_size=5))


LINE_EDITS = (
    "hostile", "hostile", "hostile", "drop_field", "add_field", "drop_line", "dup_line",
    "blank_line", "huge_field", "swap_fields",
)  # fmt: skip
BYTE_EDITS = (
    "none", "none", "none", "none", "none", "truncate", "flip", "nul", "latin1", "utf16",
    "bom", "cr", "empty", "garbage",
)  # fmt: skip
HUGE_SIZES = (150_000, 1_200_000)


def edit_rows(
    d: Draw, rows: list[list[str]], what: list[str], hostile: Sequence[str], start: int = 0
) -> None:
    """0-3 line-level edits of ``rows`` (lists of fields) from row ``start`` on."""
    for _ in range(d.int(0, 3)):
        if len(rows) <= start:
            return
        kind = d.pick(LINE_EDITS)
        i = d.int(start, len(rows) - 1)
        row = rows[i]
        j = d.int(0, max(0, len(row) - 1))
        if kind == "hostile" and row:
            row[j] = d.pick(hostile)
            what.append(f"{row[j][:12]!r}@{i + 1}:{j + 1}")
        elif kind == "drop_field" and row:
            del row[j]
            what.append(f"drop-field@{i + 1}")
        elif kind == "add_field":
            row.insert(j, d.pick(hostile))
            what.append(f"add-field@{i + 1}")
        elif kind == "drop_line":
            del rows[i]
            what.append(f"drop-line@{i + 1}")
        elif kind == "dup_line":
            rows.insert(i, list(row))
            what.append(f"dup-line@{i + 1}")
        elif kind == "blank_line":
            rows.insert(i, [d.pick(("", " ", "\t"))])
            what.append(f"blank@{i + 1}")
        elif kind == "huge_field" and row:
            size = d.pick(HUGE_SIZES)
            row[j] = d.pick(("7", "x", "a ")) * (size // 2)
            what.append(f"huge({size})@{i + 1}")
        elif kind == "swap_fields" and len(row) > 1:
            k = d.int(0, len(row) - 1)
            row[j], row[k] = row[k], row[j]
            what.append(f"swap@{i + 1}")


def join_rows(d: Draw, rows: list[list[str]], sep: str) -> bytes:
    eol = d.pick(("\n", "\n", "\r\n"))
    text = eol.join(sep.join(r) for r in rows)
    return (text + (eol if d.chance(80) else "")).encode("utf-8")


def edit_bytes(d: Draw, raw: bytes, what: list[str], extra: Sequence[str] = ()) -> bytes:
    """0-2 byte-level edits: truncation, flips, NULs, other encodings, BOM, garbage."""
    for _ in range(d.int(0, 2)):
        kind = d.pick((*BYTE_EDITS, *extra))
        pos = d.int(0, len(raw))
        if kind == "none":
            continue
        what.append(kind)
        if kind == "truncate":
            raw = raw[:pos]
        elif kind == "flip" and raw:
            buf = bytearray(raw)
            for _ in range(d.int(1, 3)):
                buf[d.int(0, len(buf) - 1)] ^= d.int(1, 255)
            raw = bytes(buf)
        elif kind == "nul":
            raw = raw[:pos] + b"\x00" + raw[pos:]
        elif kind == "latin1":
            text = raw.decode("utf-8", "replace")
            k = d.int(0, len(text))
            raw = (text[:k] + "caf\u00e9" + text[k:]).encode("latin-1", "replace")
        elif kind == "utf16":
            raw = raw.decode("utf-8", "replace").encode("utf-16")
        elif kind == "bom":
            raw = b"\xef\xbb\xbf" + raw
        elif kind == "cr":
            raw = raw.replace(b"\n", b"\r")
        elif kind == "empty":
            raw = b""
        elif kind == "garbage":
            raw = raw[:pos] + d.data.draw(st.binary(min_size=1, max_size=48)) + raw[pos:]
        elif kind == "unit_sep":
            raw = raw[:pos] + b"\x1f" + raw[pos:]
    return raw


def _walk(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def edit_json(d: Draw, obj: Any, what: list[str]) -> Any:
    """0-3 structural edits: a value set to a hostile one, a key dropped, a wrong shape."""
    for _ in range(d.int(0, 3)):
        paths = list(itertools.islice(_walk(obj), 400))
        path = d.pick(paths)
        kind = d.pick(("set", "set", "set", "drop", "wrap", "deep", "bigint"))
        where = "/".join(map(str, path)) or "root"
        if kind == "drop" and path and isinstance(_get(obj, path[:-1]), (dict, list)):
            parent = _get(obj, path[:-1])
            del parent[path[-1]]
            what.append(f"drop {where}")
            continue
        value: Any
        if kind == "set":
            value = d.pick(HOSTILE_JSON)
        elif kind == "wrap":
            value = [_get(obj, path)]
        else:
            value = DEEP if kind == "deep" else BIGINT
        shown = kind if kind in ("deep", "bigint") else str(value)[:12]
        what.append(f"{kind} {where}={shown}")
        if not path:
            obj = value
        else:
            _get(obj, path[:-1])[path[-1]] = value
    return obj


def dump_json(d: Draw, obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=d.chance(50), indent=d.pick((None, 1)))
    text = text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)
    return text.replace(json.dumps(BIGINT), "1" * 5000)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` pixels."""
    raw = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(raw)


def image_file(d: Draw, what: list[str], w: int, h: int, gray: bool = False) -> bytes:
    """PNG bytes of a w x h image, sometimes corrupt (truncated, not an image, a bomb)."""
    rng = np.random.default_rng(d.int(0, 1000))
    shape = (h, w) if gray else (h, w, 3)
    raw = png_bytes(rng.integers(0, 256, shape, dtype=np.uint8))
    kind = d.pick(("ok",) * 6 + ("truncate", "text", "empty", "bomb", "flip", "flip"))
    if kind != "ok":
        what.append(f"image:{kind}")
    if kind == "truncate":
        return raw[: d.int(0, len(raw) - 1)]
    if kind == "text":
        return b"not an image\n"
    if kind == "empty":
        return b""
    if kind == "bomb":
        return bomb_png()
    if kind == "flip":
        buf = bytearray(raw)
        buf[d.int(0, len(buf) - 1)] ^= d.int(1, 255)
        return bytes(buf)
    return raw


# --- cases and judging -------------------------------------------------------------------


@dataclass
class Case:
    """One drawn example: how to run the reader and what its result must satisfy.

    ``files``: paths an error message may name; ``lines``: line-oriented files (name ->
    number of lines), whose errors must name ``file:line`` with an existing line.
    ``check`` returns a problem with the result (wrong data passed on), or None.
    """

    what: list[str]
    files: list[Path]
    run: Callable[[], Any]
    check: Callable[[Any], str | None] = lambda _result: None
    lines: dict[str, int] = field(default_factory=dict)
    skipped: Callable[[Any], bool] = lambda _result: False  # bad rows counted and skipped


def count_lines(raw: bytes) -> int:
    return len(re.split(rb"\r\n|\r|\n", raw))


# Errors about a file as a whole, which have no line to name.
WHOLE_FILE = re.compile(
    r"no (data )?rows|no rows to predict|no samples|(file|list) is empty|no such file|not found"
    r"|lists no|names no|no image ids|no class names|no valid rows|item \d+|zlib|gzip|decompress"
)


def message_problem(case: Case, msg: str) -> str | None:
    """Why a user error's message is not good enough, or None.

    It must name an input file; a line-oriented file, with an existing line (unless the
    message is about the file as a whole, or also names a non-line file such as an xml).
    """
    named = [f for f in case.files if str(f) in msg or f.name in msg]
    if not named:
        return "message names no input file"
    located = False
    for f in named:
        if f.name not in case.lines:
            located = True
            continue
        found = re.findall(re.escape(f.name) + r":(\d+)", msg) + re.findall(r"\bline (\d+)", msg)
        for n in found:
            if not 1 <= int(n) <= case.lines[f.name] + 1:
                return f"message names line {n} of a {case.lines[f.name]}-line file"
        located = located or bool(found)
    if not located and not WHOLE_FILE.search(msg):
        return f"message names {named[0].name} but no line"
    return None


def judge(case: Case, timeout: float) -> tuple[str, str]:
    """('accepted' | 'refused' | 'crash', detail) for one case, run in this process."""
    from e2ekit.core.errors import E2EError

    try:
        with time_limit(timeout):
            result = case.run()
            problem = case.check(result)
    except Hang as exc:
        return "crash", f"hang: {exc}"
    except E2EError as exc:
        msg = str(exc)
        problem = message_problem(case, msg)
        if problem:
            return "crash", f"{problem}: {msg[:160]}"
        return "refused", msg
    except RecursionError:
        return "crash", "RecursionError"
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {str(exc)[:160]}"
    if problem:
        return "crash", f"wrong data: {problem}"
    return ("skipped" if case.skipped(result) else "accepted"), ""


def judge_isolated(case: Case, timeout: float) -> tuple[str, str]:
    """:func:`judge` in a forked child, so a reader that kills its process (a segfault in
    a native decoder) or hangs inside native code is one crash, not the end of the run."""
    if not hasattr(os, "fork"):
        return judge(case, timeout)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: answer through the pipe, never return into hypothesis
        code = 0
        try:
            os.close(r)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)  # native decoders print their own complaints
            os.write(w, json.dumps(judge(case, timeout)).encode("utf-8"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout + 10)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "crash", f"hang: no answer in {timeout + 10:g} s (native code)"
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "crash", f"process killed by {signal.Signals(os.WTERMSIG(status)).name}"
    if not chunks:
        return "crash", f"process exited with status {os.waitstatus_to_exitcode(status)}"
    outcome, detail = json.loads(b"".join(chunks))
    return outcome, detail


@dataclass
class Tally:
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    skipped: int = 0
    crashes: int = 0
    first: str = ""
    kinds: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first example of each kind
    slowest: float = 0.0  # seconds of the slowest case (a hang is a crash)

    def add(self, outcome: str, detail: str, what: list[str]) -> None:
        self.cases += 1
        if outcome in ("accepted", "skipped"):
            self.accepted += 1
            self.skipped += outcome == "skipped"
        elif outcome == "refused":
            self.refused += 1
        else:
            self.crashes += 1
            kind = re.sub(r"[:(].*", "", detail).strip()
            self.kinds[kind] += 1
            example = f"{detail} <- {' '.join(what)[:200]}"
            self.examples.setdefault(kind, example)
            self.first = self.first or example


@dataclass(frozen=True)
class Reader:
    name: str
    make: Callable[[Draw, Path], Case]
    weight: float = 1.0  # share of the example budget (slow readers get fewer)


def fuzz(
    reader: Reader, root: Path, examples: int, timeout: float, keep: Path | None = None
) -> Tally:
    """Run ``examples`` drawn cases of ``reader``; ``keep`` receives the files of the first
    crashing case of each kind (``keep/<reader>/<n>``) to reproduce it by hand."""
    tally = Tally()
    counter = itertools.count()

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        folder = root / reader.name / str(next(counter))
        folder.mkdir(parents=True)
        try:
            what: list[str] = []
            try:
                case = reader.make(Draw(data), folder)
            except Exception as exc:
                tally.add("crash", f"generator {type(exc).__name__}: {exc}", what)
                return
            t0 = time.perf_counter()
            outcome, detail = judge_isolated(case, timeout)
            tally.slowest = max(tally.slowest, time.perf_counter() - t0)
            kinds = len(tally.kinds)
            tally.add(outcome, detail, case.what)
            if keep is not None and len(tally.kinds) > kinds:
                saved = keep / reader.name / str(kinds)
                shutil.copytree(folder, saved, dirs_exist_ok=True)
                (saved / "CASE.txt").write_text(f"{detail}\n{' '.join(case.what)}\n")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    prop()
    return tally


# --- toy ---------------------------------------------------------------------------------


def _finite32(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all() and (np.abs(x) <= np.finfo(np.float32).max).all())


def toy_csv(d: Draw, folder: Path) -> Case:
    from e2ekit.toy.data import read_csv

    nf, nc = d.int(1, 4), d.int(2, 4)
    rows = [
        [str(d.int(0, nc - 1)), *(repr(d.number()) for _ in range(nf))] for _ in range(d.int(1, 6))
    ]
    header = d.chance(50)
    if header:
        rows.insert(0, ["label", *(f"f{i}" for i in range(1, nf + 1))])
    what = [f"csv {len(rows)}x{nf + 1} classes={nc}"]
    edit_rows(d, rows, what, HOSTILE_NUM, start=int(header))
    raw = edit_bytes(d, join_rows(d, rows, ","), what)
    path = folder / "train.csv"
    path.write_bytes(raw)

    def check(res: tuple[np.ndarray, np.ndarray]) -> str | None:
        x, y = res
        if x.ndim != 2 or x.shape[1] != nf or len(x) != len(y):
            return f"shapes {x.shape} {y.shape}"
        if not _finite32(x):
            return "a non-finite feature was accepted"
        if not ((y >= 0) & (y < nc)).all():
            return f"label out of range: {y.tolist()}"
        return None

    return Case(what, [path], lambda: read_csv(path, nf, nc), check, {path.name: count_lines(raw)})


def toy_predict(d: Draw, folder: Path) -> Case:
    from e2ekit.toy.data import read_features

    nf = d.int(1, 4)
    labelled = d.chance(30)
    rows = [
        [*([str(d.int(0, 2))] if labelled else []), *(repr(d.number()) for _ in range(nf))]
        for _ in range(d.int(1, 6))
    ]
    if d.chance(40):
        rows.insert(0, [f"f{i}" for i in range(len(rows[0]))])
    what = [f"predict csv {len(rows)}x{nf}"]
    edit_rows(d, rows, what, HOSTILE_NUM)
    raw = edit_bytes(d, join_rows(d, rows, ","), what)
    path = folder / "input.csv"
    path.write_bytes(raw)

    def check(x: np.ndarray) -> str | None:
        if x.ndim != 2 or x.shape[1] != nf:
            return f"shape {x.shape}"
        return None if _finite32(x) else "a non-finite feature was accepted"

    return Case(what, [path], lambda: read_features(path, nf), check, {path.name: count_lines(raw)})


# --- text --------------------------------------------------------------------------------

LABELS = ("0", "1", "pos", "neg")
TAGS = ("O", "B-PER", "I-PER", "E-PER", "S-LOC", "B-ORG", "I-ORG")


def _sentence(d: Draw, n: int) -> list[str]:
    return [d.word() for _ in range(n)]


def text_pairs(d: Draw, folder: Path) -> Case:
    from e2ekit.text.data.readers import read_text_pairs

    is_csv = d.chance(40)
    pair = d.chance(50)
    require = d.chance(70)
    names = {
        "text_a": d.pick(("text_a", "sentence1", "text")),
        "text_b": d.pick(("text_b", "sentence2")),
        "label": d.pick(("label", "labels")),
    }
    cols = ["text_a", *(["text_b"] if pair else []), "label"]
    if d.chance(30):
        cols.insert(d.int(0, len(cols)), "qid")
    if d.chance(30):
        cols = list(d.data.draw(st.permutations(cols)))
    header = [names.get(c, c) for c in cols]
    rows = [header]
    for _ in range(d.int(1, 6)):
        rows.append(
            [
                " ".join(_sentence(d, d.int(1, 4)))
                if c.startswith("text")
                else d.pick(LABELS)
                if c == "label"
                else str(d.int(0, 99))
                for c in cols
            ]
        )
    what = [f"{'csv' if is_csv else 'tsv'} pair={pair} require={require} cols={header}"]
    edit_rows(d, rows, what, HOSTILE_TEXT)
    path = folder / ("train.csv" if is_csv else "train.tsv")
    if is_csv:
        buf = io.StringIO()
        csv.writer(buf, lineterminator=d.pick(("\n", "\r\n"))).writerows(rows)
        raw = buf.getvalue().encode("utf-8")
    else:
        raw = join_rows(d, rows, "\t")
    raw = edit_bytes(d, raw, what)
    path.write_bytes(raw)

    def check(examples: list[Any]) -> str | None:
        for ex in examples:
            if not isinstance(ex.text_a, str) or (pair and not isinstance(ex.text_b, str)):
                return f"line {ex.line}: text missing"
            if require and not (isinstance(ex.label, str) and ex.label.strip()):
                return f"line {ex.line}: empty label accepted"
            if not 1 <= ex.line <= count_lines(raw):
                return f"example line {ex.line} outside the file"
        return None

    return Case(
        what,
        [path],
        lambda: read_text_pairs(path, pair=pair, require_label=require),
        check,
        {path.name: count_lines(raw)},
    )


def text_ner(d: Draw, folder: Path) -> Case:
    from e2ekit.text.data.readers import NER_TAG, read_ner

    fmt = d.pick(("tsv", "jsonl", "conll"))
    require = d.chance(70)
    sents = []
    for _ in range(d.int(1, 4)):
        n = d.int(1, 4)
        sents.append((_sentence(d, n), [d.pick(TAGS) for _ in range(n)]))
    what = [f"ner {fmt} require={require} sentences={len(sents)}"]
    files: list[Path] = []
    if fmt == "jsonl":
        path = folder / d.pick(("train.jsonl", "train.json"))
        ints = d.chance(30)
        table = {t: i for i, t in enumerate(TAGS)}
        items: Any = [
            {"words": w, "ner": [table[t] for t in tags] if ints else tags} for w, tags in sents
        ]
        items = edit_json(d, items, what)
        lines = (
            [dump_json(d, it).replace("\n", " ") for it in items]
            if isinstance(items, list)
            else [dump_json(d, items)]
        )
        raw = ("\n".join(lines) + "\n").encode("utf-8")
        if ints:
            lab = folder / "label2id.json"
            lab_what: list[str] = []
            lab_obj = edit_json(d, dict(table), lab_what) if d.chance(30) else table
            lab.write_bytes(edit_bytes(d, dump_json(d, lab_obj).encode(), lab_what))
            what += [f"label2id:{w}" for w in lab_what]
            files.append(lab)
    else:
        path = folder / "train.txt"
        rows: list[list[str]] = []
        if fmt == "tsv":
            if d.chance(30):
                rows.append(["text_a", "label"])
            rows += [[" ".join(w), " ".join(t)] for w, t in sents]
            edit_rows(d, rows, what, HOSTILE_TEXT)
            raw = join_rows(d, rows, "\t")
        else:
            for w, t in sents:
                rows += [[tok, tag] for tok, tag in zip(w, t, strict=True)] + [[""]]
            edit_rows(d, rows, what, HOSTILE_TEXT)
            raw = join_rows(d, rows, d.pick((" ", "\t")))
    raw = edit_bytes(d, raw, what)
    path.write_bytes(raw)
    files.insert(0, path)

    def check(examples: list[Any]) -> str | None:
        for ex in examples:
            if not ex.tokens or any(not t.strip() for t in ex.tokens):
                return f"line {ex.line}: blank token accepted"
            if ex.tags is None:
                if require:
                    return f"line {ex.line}: no tags with labels required"
                continue
            if len(ex.tags) != len(ex.tokens):
                return f"line {ex.line}: {len(ex.tokens)} tokens, {len(ex.tags)} tags"
            bad = [t for t in ex.tags if not NER_TAG.match(t)]
            if bad:
                return f"line {ex.line}: tag {bad[0]!r} accepted"
        return None

    return Case(
        what, files, lambda: read_ner(path, require_label=require), check,
        {path.name: count_lines(raw)},
    )  # fmt: skip


def _squad_doc(d: Draw) -> tuple[list[dict], str]:
    """SQuAD questions: (flattened HF items, layout) with answers taken from the context."""
    items = []
    for q in range(d.int(1, 4)):
        words = _sentence(d, d.int(2, 8))
        context = " ".join(words)
        k = d.int(0, len(words) - 1)
        answer = words[k]
        start = len(" ".join(words[:k])) + (1 if k else 0)
        if d.chance(15):
            start += d.int(-3, 3)  # a wrong offset the reader repairs
        items.append(
            {"id": f"q{q}", "question": " ".join(_sentence(d, 3)), "context": context,
             "answers": {"text": [answer], "answer_start": [start]}}
        )  # fmt: skip
    return items, d.pick(("squad", "hf", "jsonl"))


def text_squad(d: Draw, folder: Path) -> Case:
    from e2ekit.text.data.readers import read_squad

    items, layout = _squad_doc(d)
    require = d.chance(60)
    what = [f"squad {layout} questions={len(items)} require={require}"]
    obj: Any
    if layout == "squad":
        obj = {
            "version": "1.1",
            "data": [
                {"title": "t", "paragraphs": [
                    {"context": it["context"], "qas": [
                        {"id": it["id"], "question": it["question"], "answers": [
                            {"text": t, "answer_start": s}
                            for t, s in zip(it["answers"]["text"], it["answers"]["answer_start"],
                                            strict=True)]}]}
                    for it in items]}
            ],
        }  # fmt: skip
    else:
        obj = {"data": items} if layout == "hf" else items
    obj = edit_json(d, obj, what)
    if layout == "jsonl" and isinstance(obj, list):
        text = "\n".join(dump_json(d, it).replace("\n", " ") for it in obj) + "\n"
        path = folder / "train.jsonl"
    else:
        text = dump_json(d, obj)
        path = folder / "train.json"
    raw = edit_bytes(d, text.encode("utf-8"), what)
    path.write_bytes(raw)

    def check(examples: list[Any]) -> str | None:
        ids = [ex.qid for ex in examples]
        if len(set(ids)) != len(ids):
            return "duplicate question ids accepted"
        for ex in examples:
            if not isinstance(ex.context, str) or not isinstance(ex.question, str):
                return f"question {ex.qid}: context/question not text"
            if require and not ex.answers:
                return f"question {ex.qid}: no answers with answers required"
            for a in ex.answers:
                s, t = a["answer_start"], a["text"]
                if not isinstance(s, int) or ex.context[s : s + len(t)] != t:
                    return f"question {ex.qid}: answer {t!r} not at {s!r}"
        return None

    return Case(what, [path], lambda: read_squad(path, require_answers=require), check)


def text_predict(d: Draw, folder: Path) -> Case:
    from e2ekit.text.kit import read_predict_input

    task = d.pick(("cls", "pair", "ner"))
    kind = d.pick(("txt", "tsv", "json", "jsonl"))
    texts = [" ".join(_sentence(d, d.int(1, 4))) for _ in range(d.int(1, 5))]
    seconds = [" ".join(_sentence(d, 2)) for _ in texts]
    what = [f"predict {task} {kind} items={len(texts)}"]
    lines: dict[str, int] = {}
    if kind in ("txt", "tsv"):
        rows = (
            [["text_a", "text_b"], *map(list, zip(texts, seconds, strict=True))]
            if kind == "tsv"
            else [[t] for t in texts]
        )
        edit_rows(d, rows, what, HOSTILE_TEXT)
        raw = join_rows(d, rows, "\t")
        path = folder / f"input.{kind}"
    else:
        items: Any = [
            {"text_a": a, "text_b": b} if task == "pair" or d.chance(30) else a
            for a, b in zip(texts, seconds, strict=True)
        ]
        items = edit_json(d, items, what)
        if kind == "json":
            raw = dump_json(d, items).encode("utf-8")
        else:
            seq = items if isinstance(items, list) else [items]
            raw = ("\n".join(dump_json(d, it).replace("\n", " ") for it in seq) + "\n").encode()
        path = folder / f"input.{kind}"
    raw = edit_bytes(d, raw, what)
    path.write_bytes(raw)
    if kind != "json":
        lines[path.name] = count_lines(raw)

    def check(items: list[Any]) -> str | None:
        for i, it in enumerate(items):
            ok = isinstance(it, str) or (
                isinstance(it, tuple) and len(it) == 2 and all(isinstance(s, str) for s in it)
            )
            if not ok or (task == "pair" and not isinstance(it, tuple)):
                return f"item {i} is {it!r}"[:80]
        return None

    return Case(what, [path], lambda: read_predict_input(task, path), check, lines)


# --- det ---------------------------------------------------------------------------------


def det_check(ds: Any, check_files: bool) -> str | None:
    """A validated detection set: sizes positive, boxes finite, non-empty and inside."""
    for rec in ds.records:
        if rec.width <= 0 or rec.height <= 0:
            return f"{rec.file.name}: size {rec.width}x{rec.height} passed validation"
        if check_files and not rec.file.is_file():
            return f"{rec.file}: missing image passed validation"
        b = rec.boxes
        if len(b):
            if not np.isfinite(b).all():
                return f"{rec.file.name}: non-finite box passed validation"
            if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
                return f"{rec.file.name}: empty box passed validation"
            if (b[:, :2] < 0).any() or (b[:, 2] > rec.width).any() or (b[:, 3] > rec.height).any():
                return f"{rec.file.name}: box outside the image passed validation"
            if ((rec.labels < 0) | (rec.labels >= ds.num_classes)).any():
                return f"{rec.file.name}: label out of range passed validation"
    return None


def _det_boxes(d: Draw, w: int, h: int) -> list[list[float]]:
    boxes = []
    for _ in range(d.int(0, 3)):
        x, y = d.int(0, w - 2), d.int(0, h - 2)
        boxes.append([x, y, d.int(x + 1, w), d.int(y + 1, h)])
    return boxes


def _write_images(d: Draw, folder: Path, names: list[str], sizes: list[tuple[int, int]],
                  what: list[str]) -> None:  # fmt: skip
    for name, (w, h) in zip(names, sizes, strict=True):
        if d.chance(90):
            p = folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(image_file(d, what, w, h))
        else:
            what.append(f"no-image:{name}")


def det_coco(d: Draw, folder: Path) -> Case:
    from e2ekit.det.data import read_coco, validate

    n = d.int(1, 3)
    sizes = [(d.int(4, 12), d.int(4, 12)) for _ in range(n)]
    names = [f"img/{i}.png" for i in range(n)]
    cats = [{"id": cid, "name": f"c{cid}"} for cid in sorted({d.int(1, 9) for _ in range(2)})]
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        img: dict[str, Any] = {"id": i + 1, "file_name": names[i]}
        if d.chance(80):
            img.update(width=w, height=h)
        images.append(img)
        for x1, y1, x2, y2 in _det_boxes(d, w, h):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": d.pick(cats)["id"],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
            )  # fmt: skip
    obj: Any = {"images": images, "annotations": anns, "categories": cats}
    what = [f"coco images={n} anns={len(anns)}"]
    if d.chance(15):
        images[d.int(0, n - 1)]["file_name"] = d.pick(HOSTILE_PATH)
        what.append("hostile file_name")
    obj = edit_json(d, obj, what)
    raw = edit_bytes(d, dump_json(d, obj).encode("utf-8"), what)
    ann = folder / "instances.json"
    ann.write_bytes(raw)
    _write_images(d, folder, names, sizes, what)
    drop, check_files = d.chance(50), d.chance(80)

    def run() -> Any:
        ds, _report = validate(read_coco(ann, folder), drop_invalid=drop, check_files=check_files)
        return ds

    images_named = [folder / nm for nm in names]
    return Case(what, [ann, *images_named], run, lambda ds: det_check(ds, check_files))


VOC_XML = """<annotation>
  <filename>{name}.png</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
VOC_OBJ = """  <object><name>{cls}</name><difficult>{diff}</difficult>
    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
  </object>
"""
VOC_CLASSES = ("cat", "dog", "bird")


def det_voc(d: Draw, folder: Path) -> Case:
    from e2ekit.det.data import read_coco, read_voc, validate
    from e2ekit.det.data.convert import voc_to_coco

    n = d.int(1, 3)
    what = [f"voc samples={n}"]
    (folder / "Annotations").mkdir()
    sizes = [(d.int(4, 12), d.int(4, 12)) for _ in range(n)]
    ids = [f"s{i}" for i in range(n)]
    bare = d.chance(30)
    list_rows = [[i] if bare else [f"JPEGImages/{i}.png", f"Annotations/{i}.xml"] for i in ids]
    files: list[Path] = []
    for sid, (w, h) in zip(ids, sizes, strict=True):
        objects = "".join(
            VOC_OBJ.format(cls=d.pick(VOC_CLASSES), diff=d.int(0, 1), x1=x1, y1=y1, x2=x2, y2=y2)
            for x1, y1, x2, y2 in _det_boxes(d, w, h)
        )
        text = VOC_XML.format(name=sid, w=w, h=h, objects=objects)
        if d.chance(40):  # a hostile value in one element
            tags = re.findall(r"<(width|height|xmin|ymin|xmax|ymax|name|difficult)>", text)
            tag = d.pick(tags)
            value = d.pick((*HOSTILE_NUM, "", "mouse"))
            parts = text.split(f"<{tag}>")
            k = d.int(1, len(parts) - 1)
            parts[k] = re.sub(r"^[^<]*", lambda _m, v=value: v, parts[k])
            text = f"<{tag}>".join(parts)
            what.append(f"<{tag}>={value[:10]!r}")
        if d.chance(10):
            text = re.sub(r"<size>.*?</size>", "", text, flags=re.S)
            what.append("no <size>")
        xml = folder / "Annotations" / f"{sid}.xml"
        xml.write_bytes(edit_bytes(d, text.encode("utf-8"), what))
        files.append(xml)
    # images named like the list says; sometimes missing, corrupt or of another suffix
    _write_images(d, folder, [f"JPEGImages/{i}.png" for i in ids], sizes, what)
    edit_rows(d, list_rows, what, HOSTILE_PATH)
    list_raw = edit_bytes(d, join_rows(d, list_rows, " "), what)
    lf = folder / "train_list.txt"
    lf.write_bytes(list_raw)
    labels = [[c] for c in VOC_CLASSES]
    lab_what: list[str] = []
    if d.chance(20):
        edit_rows(d, labels, lab_what, HOSTILE_TEXT)
    lab_raw = edit_bytes(d, join_rows(d, labels, " "), lab_what) if d.chance(20) else None
    lab = folder / "label_list.txt"
    lab.write_bytes(lab_raw if lab_raw is not None else join_rows(d, labels, " "))
    what += [f"labels:{w}" for w in lab_what]
    drop, check_files = d.chance(50), d.chance(80)

    def run() -> Any:
        ds, _ = validate(read_voc(folder, lf.name, lab.name), drop_invalid=drop,
                         check_files=check_files)  # fmt: skip
        problem = det_check(ds, check_files)
        if problem:
            return problem
        out = voc_to_coco(folder, lf.name, lab.name, folder / "coco.json")
        json.loads(out.read_text(), parse_constant=_no_constant)
        back, _ = validate(read_coco(out, folder), drop_invalid=drop, check_files=check_files)
        return det_check(back, check_files)

    lines = {lf.name: count_lines(list_raw), lab.name: count_lines(lab.read_bytes())}
    images = [folder / "JPEGImages" / f"{i}.png" for i in ids]
    return Case(what, [lf, lab, *files, *images], run, lambda problem: problem, lines)


def _no_constant(name: str) -> Any:
    raise ValueError(f"the converter wrote {name}, which is not JSON")


def det_labelme(d: Draw, folder: Path) -> Case:
    from e2ekit.det.data import labelme_to_coco, read_coco, validate

    n = d.int(1, 3)
    what = [f"labelme files={n}"]
    files, images = [], []
    for i in range(n):
        w, h = d.int(4, 12), d.int(4, 12)
        shapes = []
        for x1, y1, x2, y2 in _det_boxes(d, w, h):
            kind = d.pick(("rectangle", "polygon", "circle", "point", None))
            pts = [[x1, y1], [x2, y2]] + ([[x1, y2]] if kind == "polygon" else [])
            shape: dict[str, Any] = {"label": d.pick(VOC_CLASSES), "points": pts}
            if kind is not None:
                shape["shape_type"] = kind
            shapes.append(shape)
        obj: Any = {"shapes": shapes, "imagePath": f"{i}.png"}
        if d.chance(80):
            obj.update(imageWidth=w, imageHeight=h)
        if d.chance(10):
            obj["imagePath"] = d.pick(HOSTILE_PATH)
            what.append(f"imagePath={obj['imagePath'][:10]!r}")
        obj = edit_json(d, obj, what)
        f = folder / f"{i}.json"
        f.write_bytes(edit_bytes(d, dump_json(d, obj).encode("utf-8"), what))
        files.append(f)
        img = folder / f"{i}.png"
        if d.chance(90):
            img.write_bytes(image_file(d, what, w, h))
        images.append(img)
    out = folder / "out" / "coco.json"
    check_files = d.chance(80)

    def run() -> Any:
        labelme_to_coco(folder, out)
        json.loads(out.read_text(), parse_constant=_no_constant)
        ds, _ = validate(read_coco(out, folder), drop_invalid=True, check_files=check_files)
        return det_check(ds, check_files)

    return Case(what, [*files, *images, out], run, lambda problem: problem)


# --- seg ---------------------------------------------------------------------------------


def _seg_label(d: Draw, what: list[str], w: int, h: int, nc: int) -> bytes:
    rng = np.random.default_rng(d.int(0, 1000))
    values = rng.integers(0, nc, (h, w)).astype(np.uint8)
    kind = d.pick(("ok",) * 8 + ("range", "ignore", "u16", "rgb", "size", "image", "image"))
    if kind != "ok":
        what.append(f"label:{kind}")
    if kind == "range":
        values[0, 0] = d.int(nc, 254)
    elif kind == "ignore":
        values[0, 0] = 255
    elif kind == "u16":
        return png_bytes(values.astype(np.uint16) * d.pick((1, 257, 300)))
    elif kind == "rgb":
        return png_bytes(np.stack([values] * 3, axis=-1))
    elif kind == "size":
        return png_bytes(np.zeros((h + 1, w), np.uint8))
    elif kind == "image":
        return image_file(d, what, w, h, gray=True)
    return png_bytes(values)


def seg_check(ds: Any, nc: int, ignore: int, items: list[Any]) -> str | None:
    for i, item in enumerate(items):
        label = item["label"]
        bad = ((label < 0) | (label >= nc)) & (label != ignore)
        if bool(bad.any()):
            return f"sample {i}: label value {int(label[bad][0])} passed validation"
        if not bool(np.isfinite(item["image"].numpy()).all()):
            return f"sample {i}: non-finite image"
    return None


def seg_file_list(d: Draw, folder: Path) -> Case:
    from e2ekit.seg.data.datasets import FileListDataset
    from e2ekit.seg.data.validate import validate_labels

    nc = d.int(2, 4)
    n = d.int(1, 3)
    labelled = d.chance(85)
    what = [f"file_list samples={n} classes={nc} labelled={labelled}"]
    (folder / "img").mkdir()
    (folder / "lbl").mkdir()
    rows, named = [], []
    for i in range(n):
        w, h = d.int(4, 10), d.int(4, 10)
        img = folder / "img" / f"{i}.png"
        img.write_bytes(image_file(d, what, w, h))
        named.append(img)
        row = [f"img/{i}.png"]
        if labelled:
            lbl = folder / "lbl" / f"{i}.png"
            lbl.write_bytes(_seg_label(d, what, w, h, nc))
            named.append(lbl)
            row.append(f"lbl/{i}.png")
        rows.append(row)
    if d.chance(20):
        rows.insert(0, [d.pick(("# comment", ""))])
    edit_rows(d, rows, what, HOSTILE_PATH)
    raw = edit_bytes(d, join_rows(d, rows, d.pick((" ", " ", "\t"))), what)
    lf = folder / "train.txt"
    lf.write_bytes(raw)
    binary = d.chance(20)

    def run() -> Any:
        ds = FileListDataset(folder, lf.name, nc, binary_255_to_1=binary)
        validate_labels(ds, nc, 255, binary, progress=False)
        return ds, [ds[i] for i in range(len(ds))]

    return Case(
        what, [lf, *named], run, lambda res: seg_check(res[0], nc, 255, res[1]),
        {lf.name: count_lines(raw)},
    )  # fmt: skip


def seg_voc(d: Draw, folder: Path) -> Case:
    from e2ekit.seg.data.datasets import VOCSegDataset
    from e2ekit.seg.data.validate import validate_labels

    nc = 21
    n = d.int(1, 3)
    what = [f"voc split samples={n}"]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    named = []
    for sid in ids:
        w, h = d.int(4, 10), d.int(4, 10)
        img = folder / "JPEGImages" / f"{sid}.jpg"
        img.write_bytes(image_file(d, what, w, h))
        lbl = folder / "SegmentationClass" / f"{sid}.png"
        lbl.write_bytes(_seg_label(d, what, w, h, nc))
        named += [img, lbl]
    rows = [[i] for i in ids]
    edit_rows(d, rows, what, (*HOSTILE_PATH, *HOSTILE_TEXT))
    raw = edit_bytes(d, join_rows(d, rows, " "), what)
    split = folder / "ImageSets" / "Segmentation" / "train.txt"
    split.write_bytes(raw)

    def run() -> Any:
        ds = VOCSegDataset(folder, "train")
        validate_labels(ds, nc, 255, progress=False)
        return ds, [ds[i] for i in range(len(ds))]

    return Case(
        what, [split, *named], run, lambda res: seg_check(res[0], nc, 255, res[1]),
        {split.name: count_lines(raw)},
    )  # fmt: skip


def vision_predict(d: Draw, folder: Path) -> Case:
    """Seg and det ``predict --input``: an image, a folder of images or a list file."""
    from e2ekit.core.imageio import check_image_files, list_inputs, read_image

    kind = d.pick(("image", "folder", "list", "list"))
    n = d.int(1, 3)
    what = [f"predict input {kind} images={n}"]
    (folder / "in").mkdir()
    images = []
    for i in range(n):
        p = folder / "in" / f"{i}.png"
        p.write_bytes(image_file(d, what, d.int(4, 10), d.int(4, 10)))
        images.append(p)
    lines: dict[str, int] = {}
    if kind == "image":
        target = images[0]
    elif kind == "folder":
        target = folder / "in"
    else:
        rows = [[f"in/{i}.png"] for i in range(n)]
        edit_rows(d, rows, what, HOSTILE_PATH)
        raw = edit_bytes(d, join_rows(d, rows, " "), what)
        target = folder / "inputs.txt"
        target.write_bytes(raw)
        lines[target.name] = count_lines(raw)

    def run() -> Any:
        files = list_inputs(target)
        check_image_files(files, 1 << 24, "test.max_image_pixels")
        return [read_image(f) for f in files]

    def check(tensors: list[Any]) -> str | None:
        for t in tensors:
            if t.ndim != 3 or t.shape[0] != 3 or str(t.dtype) != "torch.uint8":
                return f"image tensor {tuple(t.shape)} {t.dtype}"
        return None

    return Case(what, [target, *images], run, check, lines)


# --- ctr ---------------------------------------------------------------------------------


def _ctr_rows(d: Draw) -> list[list[str]]:
    rows = []
    for _ in range(d.int(1, 8)):
        dense = [str(d.int(-2, 500)) if d.chance(85) else "" for _ in range(13)]
        cats = [f"{d.int(0, 2**32 - 1):08x}" if d.chance(85) else "" for _ in range(26)]
        rows.append([str(d.int(0, 1)), *dense, *cats])
    return rows


def _ctr_case(
    d: Draw, folder: Path, raw: bytes, name: str, fmt: str, what: list[str], accounted: bool
) -> Case:
    from e2ekit.ctr.data.formats import open_reader
    from e2ekit.ctr.data.loader import BatchStream

    if d.chance(15):
        raw = gzip.compress(raw, mtime=0)
        name += ".gz"
        what.append("gzip")
        raw = edit_bytes(d, raw, what) if d.chance(30) else raw
    path = folder / name
    path.write_bytes(raw)
    hash_size = d.pick((2, 7, 1 << 10))
    max_bad = d.pick((None, None, 0, 2))
    chunk = d.pick((1 << 10, 1 << 16, 16 << 20))
    stream = d.chance(30)
    d_batch = d.pick((1, 3, 4096))
    # line readers split a file into byte ranges for parallel workers: every row read once
    shards = d.pick((1, 1, 1, 2, 3)) if fmt in ("criteo", "slots") else 1
    what.append(f"{fmt} max_bad={max_bad} chunk={chunk} stream={stream} shards={shards}")

    def run() -> Any:
        stats, batches = [], []
        for index in range(shards):
            reader = open_reader(
                path, format=fmt, batch_size=d_batch, hash_size=hash_size,
                max_bad_rows=max_bad, chunk_bytes=chunk,
            )  # fmt: skip
            if shards > 1:  # as the trainer's workers do (ctr/data/splits.py)
                reader.shard = (index, shards)
            source: Any = reader
            if stream:
                source = BatchStream(reader, batch_size=d_batch, prefetch=1)
            batches += [{k: np.asarray(v) for k, v in b.items()} for b in source]
            stats.append(reader.stats)
        return stats, batches

    text = gzip.decompress(raw) if name.endswith(".gz") and _gunzips(raw) else raw
    if name.endswith(".gz") and not _gunzips(raw):
        accounted = False
    pieces = re.split(rb"\r\n|\r|\n", text)
    # Rows the reader must read or count as bad. Slot lines of only whitespace are blank;
    # a line holding the \x1f byte Arrow splits on is always counted bad.
    if fmt == "slots":
        expected = sum(1 for ln in pieces if b"\x1f" in ln or ln.decode("utf-8", "replace").strip())
    else:
        expected = sum(1 for ln in pieces if ln)

    def check(res: tuple[list[Any], list[dict[str, np.ndarray]]]) -> str | None:
        stats, batches = res
        rows = sum(len(b["label"]) for b in batches)
        good, bad = sum(st.rows for st in stats), sum(st.bad_rows for st in stats)
        if rows != good:
            return f"{rows} rows yielded but stats say {good}"
        for b in batches:
            if not np.isin(b["label"], (0, 1)).all():
                return "a label other than 0/1 passed"
            if not np.isfinite(b["dense"]).all():
                return "a non-finite dense value passed"
            if ((b["sparse"] < 0) | (b["sparse"] >= hash_size)).any():
                return "a sparse id outside the hash table passed"
        if max_bad is not None and max(st.bad_rows for st in stats) > max_bad:
            return f"{bad} bad rows with max_bad_rows={max_bad} did not stop"
        if accounted and good + bad != expected:
            return (
                f"{expected} non-empty lines but {good} rows + {bad} counted bad: "
                "rows dropped (or read twice) uncounted"
            )
        return None

    def skipped(res: tuple[list[Any], list[dict[str, np.ndarray]]]) -> bool:
        return any(st.bad_rows for st in res[0])

    return Case(what, [path], run, check, {path.name: count_lines(text)}, skipped)


def _gunzips(raw: bytes) -> bool:
    try:
        gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return False
    return True


def ctr_tsv(d: Draw, folder: Path) -> Case:
    rows = _ctr_rows(d)
    what = [f"criteo tsv rows={len(rows)}"]
    if d.chance(20):  # stripped trailing empty categoricals (Criteo test files)
        rows[0] = rows[0][: d.int(37, 40)]
    edit_rows(d, rows, what, HOSTILE_NUM)
    raw = edit_bytes(d, join_rows(d, rows, "\t"), what, extra=("unit_sep", "unit_sep"))
    fmt = d.pick(("criteo", "auto"))
    return _ctr_case(d, folder, raw, "day_0.txt", fmt, what, accounted=fmt == "criteo")


def ctr_csv(d: Draw, folder: Path) -> Case:
    from e2ekit.ctr.data.criteo import DENSE_NAMES, SPARSE_NAMES

    names = ["label", *DENSE_NAMES, *SPARSE_NAMES]
    rows = _ctr_rows(d)
    if d.chance(30):
        order = d.data.draw(st.permutations(range(len(names))))
        names = [names[i] for i in order]
        rows = [[r[i] for i in order] for r in rows]
    if d.chance(20):
        names.append("extra")
        rows = [[*r, "e"] for r in rows]
    rows.insert(0, list(names))
    what = [f"criteo csv rows={len(rows) - 1}"]
    if d.chance(10):
        rows[0][d.int(0, len(names) - 1)] = d.pick(("label", "I1", "", "x"))
        what.append("header edit")
    edit_rows(d, rows, what, (*HOSTILE_NUM, '"', '"1,2"'), start=1)
    raw = edit_bytes(d, join_rows(d, rows, ","), what)
    fmt = d.pick(("criteo_csv", "auto"))
    return _ctr_case(d, folder, raw, "train.csv", fmt, what, accounted=False)


def ctr_slots(d: Draw, folder: Path) -> Case:
    rows = []
    for _ in range(d.int(1, 6)):
        label = d.pick(("0", "1", "click:0", "click:1", "label:1"))
        dense = [f"dense_feature:{d.number(0, 1):.3f}" for _ in range(d.int(0, 13))]
        slots = [f"{d.int(1, 26)}:{d.int(0, 10**6)}" for _ in range(d.int(0, 8))]
        rows.append([label, *dense, *slots])
    hostile = (
        *HOSTILE_NUM, "dense_feature:nan", "dense_feature:inf", "dense_feature:1e400",
        "dense_feature:", "27:5", "1:-3", "1:abc", "1:" + "9" * 30, ":", "x", "click:2",
    )  # fmt: skip
    what = [f"slots rows={len(rows)}"]
    edit_rows(d, rows, what, hostile)
    raw = edit_bytes(d, join_rows(d, rows, " "), what)
    fmt = d.pick(("slots", "auto"))
    return _ctr_case(d, folder, raw, "part-0", fmt, what, accounted=fmt == "slots")


READERS: tuple[Reader, ...] = (
    Reader("toy.read_csv", toy_csv),
    Reader("toy.read_features", toy_predict),
    Reader("text.read_text_pairs", text_pairs),
    Reader("text.read_ner", text_ner),
    Reader("text.read_squad", text_squad),
    Reader("text.predict_input", text_predict),
    Reader("det.read_coco", det_coco, 0.8),
    Reader("det.read_voc", det_voc, 0.6),
    Reader("det.labelme_to_coco", det_labelme, 0.6),
    Reader("seg.file_list", seg_file_list, 0.6),
    Reader("seg.voc", seg_voc, 0.5),
    Reader("vision.predict_input", vision_predict, 0.6),
    Reader("ctr.criteo_tsv", ctr_tsv, 0.7),
    Reader("ctr.criteo_csv", ctr_csv, 0.7),
    Reader("ctr.slots", ctr_slots, 0.7),
)


def run(
    work: Path, quick: bool = False, only: Sequence[str] = (), keep: Path | None = None
) -> list[Row]:
    """One row per reader: cases tried, crashes (first failing example in the notes)."""
    import torch  # noqa: F401  (imported once here, not again in every forked case)

    root = work / "fuzz_readers"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    set_hypothesis_home_dir(str(root / ".hypothesis"))  # its caches stay out of the repo
    rows = []
    logger = logging.getLogger("e2ekit")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # readers warn about repairs; the tally is the output
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for reader in READERS:
                if only and not any(o in reader.name for o in only):
                    continue
                n = QUICK_EXAMPLES if quick else max(10, round(FULL_EXAMPLES * reader.weight))
                with Timer() as t:
                    tally = fuzz(reader, root, n, TIMEOUT_S, keep)
                notes = [f"first: {tally.first}"] if tally.first else []
                notes += [f"{v}x {tally.examples[k]}" for k, v in tally.kinds.most_common()]
                rows.append(
                    Row(
                        PART,
                        reader.name,
                        {
                            "cases": tally.cases,
                            "accepted": tally.accepted,
                            "refused": tally.refused,
                            "skips": tally.skipped,
                            "crashes": tally.crashes,
                            "max_s": round(tally.slowest, 1),
                            "s": t.seconds,
                        },
                        ok=tally.crashes == 0,
                        notes=notes,
                    )
                )
    finally:
        logger.setLevel(level)
        set_hypothesis_home_dir(None)
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    parser.add_argument("--quick", action="store_true", help="about 20 examples per reader")
    parser.add_argument("--only", nargs="*", default=(), help="readers whose name contains these")
    parser.add_argument("--keep", type=Path, default=None, help="copy crashing cases here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="e2ekit-fuzz-"))
    rows = run(work, quick=args.quick, only=args.only, keep=args.keep)
    print_rows(rows)
    for r in rows:
        for note in r.notes:
            print(f"  {r.target}: {note}")


if __name__ == "__main__":
    main()
