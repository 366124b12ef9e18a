"""Text augmentation for distillation: many cheap variants of the training text.

A tiny student learns a fine-tuned teacher's function only where it sees the teacher's soft
labels, and the labelled training set is far too small for that. Following Tang et al.
(2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks") and
ERNIE Slim, each sentence is copied ``factor`` times with words masked, words swapped for a
nearest neighbour in an embedding space (a stand-in for "same part of speech"), and
sometimes cut to a random n-gram; the teacher then labels every copy.
"""

from __future__ import annotations

import gzip
import random
import re
import string
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.core.errors import DataError
from e2ekit.text.data.readers import _CJK, read_texts
from e2ekit.text.data.readers import split_words as _reader_split_words

Item = str | tuple[str, str]

# A space between two CJK characters is an artefact of splitting, not of the text.
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")
_HAS_CJK = re.compile(f"[{_CJK}]")
# Placeholders such as [CLS], [unused3], <s>: never real words.
_SPECIAL_SHAPE = re.compile(r"^(\[[^\]]*\]|<[^>]*>)$")
# Rows per matmul block: keeps one block of similarities near 64 MB of float32.
_BLOCK_ELEMENTS = 1 << 24
# Every how many columns the threshold for the top-k search is sampled from.
_SAMPLE_STRIDE = 16


@dataclass(frozen=True)
class AugmentSettings:
    """How variants are made; the defaults are Tang et al.'s (p_mask = p_pos = 0.1)."""

    factor: int = 10  # augmented variants generated per example (attempts; duplicates dropped)
    mask_prob: float = 0.1  # per word: replace by the mask token
    replace_prob: float = 0.1  # per word (when not masked): replace by a nearest neighbour
    ngram_prob: float = 0.25  # per variant: keep only a random n-gram of the words
    ngram_max: int = 5  # n is drawn uniformly from 1..ngram_max (capped at the length)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("factor", "ngram_max", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.factor < 0:
            raise ValueError(f"factor must be >= 0 (variants per example), got {self.factor}")
        for name in ("mask_prob", "replace_prob", "ngram_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.ngram_max < 1:
            raise ValueError(f"ngram_max must be >= 1, got {self.ngram_max}")


def split_words(text: str) -> list[str]:
    """The words the augmenter edits: whitespace-separated runs, each CJK character alone
    (Chinese has no spaces, and a character is the unit BERT's vocabulary uses for it)."""
    return _reader_split_words(text)


def join_words(words: list[str]) -> str:
    """Words back to text: one space between words, none between two CJK characters, so
    Chinese reads (and tokenises) as it was written."""
    text = " ".join(words)
    return _CJK_GAP.sub("", text) if _HAS_CJK.search(text) else text


class Neighbours:
    """Nearest-neighbour word table for replacement (the 'same part of speech' stand-in).

    Lists are stored as tuples once, so drawing a neighbour inside the augmentation loop is
    a dict lookup and one random index.
    """

    def __init__(self, table: dict[str, list[str]]) -> None:
        self._table: dict[str, tuple[str, ...]] = {
            word: tuple(found) for word, found in table.items() if found
        }

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.lookup(word) is not None

    def lookup(self, word: str) -> tuple[str, ...] | None:
        """The neighbours of ``word`` (or of its lowercase form), None when unknown."""
        found = self._table.get(word)
        if found is None and not word.islower():
            found = self._table.get(word.lower())
        return found

    def sample(self, word: str, rng: random.Random) -> str | None:
        """A random neighbour of ``word`` (lookup also tries word.lower()); None when unknown."""
        found = self.lookup(word)
        return found[rng.randrange(len(found))] if found else None

    @classmethod
    def from_vectors(
        cls,
        words: list[str],
        vectors: np.ndarray,
        k: int = 10,
        keep: Collection[str] | None = None,
    ) -> Neighbours:
        """Cosine nearest neighbours (the word itself excluded), best first.

        Similarities are computed a block of rows at a time with one matmul each, so a
        30k x 300 table needs seconds and tens of MB, not a 30k x 30k matrix. Only words
        in ``keep`` (when given; or their lowercase forms) get a row and appear as
        neighbours; zero vectors (padding rows) have no direction and are left out.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(
                f"vectors must be a (words x dim) matrix with one row per word; got shape "
                f"{vectors.shape} for {len(words)} words"
            )
        names, unit = _unit_rows(words, vectors, keep)
        return cls(dict(zip(names, _nearest(unit, names, k), strict=True)))

    @classmethod
    def from_word2vec_text(
        cls,
        path: Path,
        k: int = 10,
        keep: Collection[str] | None = None,
        limit: int | None = None,
    ) -> Neighbours:
        """Read word2vec/GloVe/fastText text vectors (``.gz`` too) and find neighbours.

        The format is an optional header line ``COUNT DIM``, then ``word v1 v2 ...`` per
        line. ``limit`` reads only the first words (these files are sorted by frequency);
        ``keep`` skips words the data never uses before they cost memory.
        """
        words, rows = _read_word2vec(Path(path), keep, limit)
        return cls.from_vectors(words, np.stack(rows), k=k)

    @classmethod
    def from_token_embeddings(
        cls,
        tokenizer: Any,
        embeddings: np.ndarray,
        k: int = 10,
        keep: Collection[str] | None = None,
    ) -> Neighbours:
        """Neighbours from a teacher's input embeddings (vocab_size x hidden) and its tokenizer.

        No external vectors are needed: the teacher's own word-piece table places words
        with similar use close together. Only whole-word tokens become words: not '##'
        pieces, not special tokens ([CLS], [unused3]), not pure punctuation. Words keep
        the vocabulary's case, so an uncased model gives lowercase words.
        """
        embeddings = np.asarray(embeddings)
        special = set(getattr(tokenizer, "all_special_tokens", None) or [])
        words, ids = [], []
        for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            if index < embeddings.shape[0] and _is_whole_word(token, special):
                words.append(token)
                ids.append(index)
        if not ids:
            return cls({})
        return cls.from_vectors(words, embeddings[np.asarray(ids)], k=k, keep=keep)


def _is_whole_word(token: str, special: Collection[str]) -> bool:
    """A vocabulary entry that is a word a sentence could contain on its own."""
    if not token.strip() or token.startswith("##") or token in special:
        return False
    if _SPECIAL_SHAPE.match(token):
        return False
    return not all(_is_punctuation(c) for c in token)


def _is_punctuation(char: str) -> bool:
    """BERT's notion: ASCII non-alphanumerics and Unicode punctuation (and symbols)."""
    return char in string.punctuation or unicodedata.category(char)[0] in "PS"


def _allowed(keep: Collection[str] | None) -> set[str] | None:
    """The words to keep, lowercased forms too: lookups fall back to the lowercase word,
    so 'The' in the data needs 'the' of an uncased vocabulary."""
    return None if keep is None else {*keep, *(w.lower() for w in keep)}


def _unit_rows(
    words: Sequence[str], vectors: np.ndarray, keep: Collection[str] | None
) -> tuple[list[str], np.ndarray]:
    """The kept, unique, non-zero rows scaled to unit length (float32 for a fast matmul)."""
    allowed = _allowed(keep)
    first: dict[str, int] = {}
    for i, word in enumerate(words):
        if word not in first and (allowed is None or word in allowed):
            first[word] = i
    index = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    unit = np.asarray(vectors[index], dtype=np.float32)
    norms = np.linalg.norm(unit, axis=1)
    live = norms > 0
    names = [w for w, ok in zip(first, live, strict=True) if ok]
    return names, unit[live] / norms[live, None]


def _nearest(unit: np.ndarray, names: list[str], k: int) -> list[list[str]]:
    """For each row, the ``k`` most cosine-similar other rows, best first."""
    n = unit.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return [[] for _ in names]
    block = max(1, _BLOCK_ELEMENTS // n)
    out: list[list[str]] = []
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # never a word's own neighbour
        out.extend([names[j] for j in row] for row in _top_k(sims, k).tolist())
    return out


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values, best first.

    Partitioning every 30k-wide row costs more than the matmul that made it. The k-th
    largest of every 16th column is a lower bound on the row's k-th largest, so only the
    few columns at or above it (about 16 k per row) need ranking.
    """
    b, n = sims.shape
    sample = sims[:, ::_SAMPLE_STRIDE]
    m = sample.shape[1]
    if m < 4 * k:  # a small table: rank every column
        top = np.argpartition(sims, n - k, axis=1)[:, n - k :]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)
    floor = np.partition(sample, m - k, axis=1)[:, m - k]
    flat = np.flatnonzero(sims >= floor[:, None])
    rows, cols = np.divmod(flat, n)
    order = np.lexsort((-sims.ravel()[flat], rows))  # by row, then best first
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(b))
    return cols[first[:, None] + np.arange(k)]


def _open_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a (possibly gzipped) text file."""
    opener: Callable[..., Any] = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        yield from f


def read_word_vectors(
    path: Path, keep: Collection[str] | None = None, limit: int | None = None
) -> tuple[list[str], np.ndarray]:
    """(words, vectors) of a word2vec/GloVe text file: neighbours and student embeddings."""
    words, rows = _read_word2vec(Path(path), keep, limit)
    return words, np.stack(rows)


def _read_word2vec(
    path: Path, keep: Collection[str] | None, limit: int | None
) -> tuple[list[str], list[np.ndarray]]:
    """(words, vectors) of a word2vec text file, failing on the first malformed line."""
    if not path.is_file():
        raise DataError(f"no such file: {path} (give a word2vec/GloVe text vectors file)")
    allowed = _allowed(keep)
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim: int | None = None
    seen = 0
    for n, raw in enumerate(_open_lines(path), start=1):
        if limit is not None and seen >= limit:
            break
        parts = _decode(path, n, raw).split()
        if not parts:
            continue
        if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            dim = int(parts[1])  # the "COUNT DIM" header
            continue
        if dim is None:
            dim = len(parts) - 1
            if dim < 1:
                raise DataError(
                    f"{path}:{n}: expected a word followed by its vector values "
                    f"('word v1 v2 ...'), found only '{parts[0][:40]}'"
                )
        if len(parts) != dim + 1:
            raise DataError(
                f"{path}:{n}: expected a word and {dim} values, found {len(parts) - 1} values; "
                "every line needs the same dimension (a word with spaces breaks the format)"
            )
        seen += 1
        if allowed is not None and parts[0] not in allowed:
            continue
        try:
            rows.append(np.array(parts[1:], dtype=np.float32))
        except ValueError:
            bad = next(p for p in parts[1:] if not _is_number(p))
            raise DataError(
                f"{path}:{n}: value '{bad[:40]}' is not a number; expected 'word' and {dim} "
                "numbers separated by spaces"
            ) from None
        words.append(parts[0])
    if dim is None:
        raise DataError(f"{path}: file is empty; expected word2vec text ('word v1 v2 ...')")
    if not rows:
        raise DataError(
            f"{path}: no vectors read"
            + (" for the words of the data; check that it is the right language" if keep else "")
        )
    return words, rows


def _decode(path: Path, n: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{n}: not UTF-8 text ({e.reason}); expected word2vec text format "
            "(convert binary .bin vectors to text, e.g. with gensim's save_word2vec_format)"
        ) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Editor:
    """One sentence side's variants: mask, replace, then maybe cut to an n-gram.

    The per-word loop draws one uniform number per word: below ``mask_prob`` masks, below
    ``mask_prob + (1 - mask_prob) * replace_prob`` replaces, which is the same distribution
    as a mask draw followed by a replace draw, at half the cost.
    """

    def __init__(
        self,
        settings: AugmentSettings,
        neighbours: Neighbours | None,
        mask_token: str,
        rng: random.Random,
    ) -> None:
        self.mask_prob = settings.mask_prob
        self.change_prob = settings.mask_prob + (1 - settings.mask_prob) * settings.replace_prob
        self.ngram_prob = settings.ngram_prob
        self.ngram_max = settings.ngram_max
        self.mask = mask_token
        self.rng = rng
        self._lookup = neighbours.lookup if neighbours is not None else None
        self._cache: dict[str, tuple[str, ...] | None] = {}

    def candidates(self, words: list[str]) -> list[tuple[str, ...] | None]:
        """Each word's neighbours, looked up once per distinct word for the whole run."""
        if self._lookup is None or self.change_prob <= self.mask_prob:
            return [None] * len(words)
        cache, lookup = self._cache, self._lookup
        out = []
        for w in words:
            if w not in cache:
                cache[w] = lookup(w)
            out.append(cache[w])
        return out

    def edit(self, words: list[str], cands: list[tuple[str, ...] | None]) -> list[str]:
        """One variant of ``words`` (``cands`` from :meth:`candidates`)."""
        rand, choice = self.rng.random, self.rng.choice
        mask_prob, change_prob, mask = self.mask_prob, self.change_prob, self.mask
        out = []
        for w, found in zip(words, cands, strict=True):
            r = rand()
            if r < mask_prob:
                out.append(mask)
            elif r < change_prob and found:
                out.append(choice(found))
            else:
                out.append(w)
        if out and self.ngram_prob and rand() < self.ngram_prob:
            n = min(self.rng.randint(1, self.ngram_max), len(out))
            start = self.rng.randint(0, len(out) - n)
            out = out[start : start + n]
        return out


def augment(
    items: Sequence[str | tuple[str, str]],
    settings: AugmentSettings,
    neighbours: Neighbours | None = None,
    mask_token: str = "[UNK]",
) -> list[str | tuple[str, str]]:
    """New variants of ``items`` (not the items themselves), item by item.

    Each item gets ``settings.factor`` attempts: every word is masked with ``mask_prob``,
    else replaced by a neighbour with ``replace_prob`` (when it has one), then with
    ``ngram_prob`` only a random contiguous n-gram is kept. Pairs are edited per side, the
    n-gram cut too. Variants equal to the original, to an earlier variant of the same item,
    or empty are dropped. The same seed gives the same list; the global RNG is untouched.
    """
    rng = random.Random(settings.seed)
    editor = _Editor(settings, neighbours, mask_token, rng)
    out: list[Item] = []
    for item in items:
        if isinstance(item, tuple):
            out.extend(_pair_variants(item, settings.factor, editor))
        else:
            out.extend(_text_variants(item, settings.factor, editor))
    return out


def _text_variants(text: str, factor: int, editor: _Editor) -> list[str]:
    words = split_words(text)
    if not words:
        return []
    cands = editor.candidates(words)
    seen = {text, join_words(words)}
    found = []
    for _ in range(factor):
        variant = join_words(editor.edit(words, cands))
        if variant.strip() and variant not in seen:
            seen.add(variant)
            found.append(variant)
    return found


def _pair_variants(pair: tuple[str, str], factor: int, editor: _Editor) -> list[tuple[str, str]]:
    text_a, text_b = pair
    words_a, words_b = split_words(text_a), split_words(text_b)
    if not words_a and not words_b:
        return []
    cands_a, cands_b = editor.candidates(words_a), editor.candidates(words_b)
    seen = {(text_a, text_b), (join_words(words_a), join_words(words_b))}
    found = []
    for _ in range(factor):
        a = join_words(editor.edit(words_a, cands_a))
        b = join_words(editor.edit(words_b, cands_b))
        lost_side = (words_a and not a.strip()) or (words_b and not b.strip())
        if not lost_side and (a, b) not in seen:
            seen.add((a, b))
            found.append((a, b))
    return found


def read_unlabeled(path: Path, pair: bool) -> list[str | tuple[str, str]]:
    """In-domain text without labels, to be augmented and labelled by the teacher.

    Any input ``predict`` reads works: plain lines, a TSV with a ``text_a`` (and
    ``text_b``) header, ``.json`` or ``.jsonl``. Blank items are skipped. A pair task needs
    both texts of every item; a single-text task takes ``text_a`` of a pair.
    """
    path = Path(path)
    if str(path) != "-" and not path.is_file():
        raise DataError(
            f"no such file: {path} (give a file of unlabeled in-domain text, one per line)"
        )
    out: list[Item] = []
    for number, item in enumerate(read_texts(path), start=1):
        if pair:
            if not isinstance(item, tuple):
                raise DataError(
                    f"{path}: item {number} has one text but the task compares pairs; give "
                    "a TSV with a 'text_a<TAB>text_b' header, or .jsonl objects with "
                    "text_a and text_b"
                )
            if item[0].strip() or item[1].strip():
                out.append(item)
        else:
            text = item[0] if isinstance(item, tuple) else item
            if text.strip():
                out.append(text)
    return out
