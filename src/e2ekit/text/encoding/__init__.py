"""Sentence embeddings from pretrained encoders: :class:`Encoder` (onnxruntime or PyTorch)."""

from e2ekit.text.encoding.encoder import Encoder
from e2ekit.text.encoding.errors import EncoderOptionError

__all__ = ["Encoder", "EncoderOptionError"]
