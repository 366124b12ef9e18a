"""Text networks: the encoder + task head, its optional CRF, and the offline loading of
pretrained encoders and tokenizers they are built from."""

from e2ekit.text.models.crf import CRF, viterbi_decode_numpy
from e2ekit.text.models.encoder import TextInference, TextModel, first_subtoken_index
from e2ekit.text.models.pretrained import (
    build_encoder,
    extend_tokenizer,
    load_encoder_config,
    load_tokenizer,
    resize_embeddings,
    resolve_model_dir,
    saved_tokenizer_dir,
    select_added_tokens,
    unknown_rate,
    unknown_words,
)

__all__ = [
    "CRF",
    "TextInference",
    "TextModel",
    "build_encoder",
    "extend_tokenizer",
    "first_subtoken_index",
    "load_encoder_config",
    "load_tokenizer",
    "resize_embeddings",
    "resolve_model_dir",
    "saved_tokenizer_dir",
    "select_added_tokens",
    "unknown_rate",
    "unknown_words",
    "viterbi_decode_numpy",
]
