"""A word-level tokenizer for the students, saved and served like a BERT tokenizer.

A student has no sub-word model of its own: its vocabulary is the words of the (augmented)
training text. It is still a Hugging Face fast tokenizer with BERT's normalizer, special
tokens and segment template, so the text runner, ``encode_text`` and offsets work on a
student export exactly as on a fine-tuned encoder export.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from e2ekit.core.errors import ConfigError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in this order
PAD, UNK, CLS, SEP, MASK = SPECIALS
MODEL_MAX_LENGTH = 1_000_000  # no limit of its own: encode_text truncates to max_seq_len


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    # handle_chinese_chars spaces out each CJK character, so each one becomes a word.
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )


def count_words(texts: Iterable[str], *, lowercase: bool = True) -> Counter[str]:
    """Word counts, split exactly as the built tokenizer will split them."""
    norm = _normalizer(lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return counts


def select_vocab(counts: Counter[str], *, max_size: int, min_freq: int) -> dict[str, int]:
    """Specials first, then words by descending count (ties by the word: deterministic)."""
    if max_size <= len(SPECIALS):
        raise ConfigError(
            f"distill.student.vocab_size: {max_size} leaves no room for words after the "
            f"{len(SPECIALS)} special tokens; use at least {len(SPECIALS) + 1}"
        )
    if min_freq < 1:
        raise ConfigError(f"distill.student.min_freq: {min_freq} must be >= 1")
    words = sorted(
        (w for w, c in counts.items() if c >= min_freq and w not in SPECIALS),
        key=lambda w: (-counts[w], w),
    )
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in words[: max_size - len(SPECIALS)]:
        vocab[w] = len(vocab)
    return vocab


def word_tokenizer(vocab: dict[str, int], *, lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Wrap a word -> id table (specials at ids 0..4) as a BERT-shaped fast tokenizer."""
    missing = [s for i, s in enumerate(SPECIALS) if vocab.get(s) != i]
    if missing:
        raise ValueError(f"vocab must map the special tokens {list(SPECIALS)} to ids 0..4")
    tok = Tokenizer(WordLevel(vocab=dict(vocab), unk_token=UNK))
    tok.normalizer = _normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=MODEL_MAX_LENGTH,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_word_tokenizer(
    texts: Iterable[str], *, max_size: int = 30000, min_freq: int = 1, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """The students' tokenizer: the ``max_size`` most frequent words of ``texts``.

    Rarer words (and words seen fewer than ``min_freq`` times) become [UNK].
    """
    counts = count_words(texts, lowercase=lowercase)
    vocab = select_vocab(counts, max_size=max_size, min_freq=min_freq)
    return word_tokenizer(vocab, lowercase=lowercase)
