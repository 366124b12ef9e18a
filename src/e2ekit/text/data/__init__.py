"""Text data: file readers, tokenized features with dynamic padding, built-in synthetic sets."""

from e2ekit.text.data.features import (
    TruncationStats,
    encode_mrc,
    encode_ner,
    encode_text,
    lengths,
    pad_batch,
)
from e2ekit.text.data.readers import (
    MrcExample,
    NerExample,
    TextExample,
    build_label_map,
    check_labels,
    read_ner,
    read_ner_words,
    read_squad,
    read_text_pairs,
    read_texts,
    split_words,
)
from e2ekit.text.data.synthetic import builtin_dir, write_builtin

__all__ = [
    "MrcExample",
    "NerExample",
    "TextExample",
    "TruncationStats",
    "build_label_map",
    "builtin_dir",
    "check_labels",
    "encode_mrc",
    "encode_ner",
    "encode_text",
    "lengths",
    "pad_batch",
    "read_ner",
    "read_ner_words",
    "read_squad",
    "read_text_pairs",
    "read_texts",
    "split_words",
    "write_builtin",
]
