"""The PyTorch module both backends start from: an encoder returning one layer's hidden states.

The same module is traced to ONNX (with eager attention, the pattern onnxruntime's optimizer
fuses into its Attention kernel) and run by the torch backend (with SDPA, PyTorch's fastest
attention), so the two backends compute the same function of the same inputs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["HiddenStates", "layer_index", "load_hidden_states"]

BERT_LIKE = ("bert", "roberta", "ernie", "xlm-roberta", "camembert")


def layer_index(layer: int, num_layers: int) -> int:
    """``layer`` as an index into ``hidden_states`` (0: embeddings, ``num_layers``: last)."""
    from e2ekit.text.encoding.errors import EncoderOptionError

    if isinstance(layer, bool) or not isinstance(layer, int):
        raise EncoderOptionError(f"layer must be an int, got {type(layer).__name__}")
    if not -(num_layers + 1) <= layer <= num_layers:
        raise EncoderOptionError(
            f"layer {layer} is out of range for a {num_layers}-layer encoder: use "
            f"-1 (last) ... {-(num_layers + 1)} (embeddings), or 0 ... {num_layers}"
        )
    return layer if layer >= 0 else num_layers + 1 + layer


class HiddenStates(nn.Module):
    """``encoder(...)`` -> hidden states (B, L, H) after layer ``index`` (0: embeddings)."""

    def __init__(self, encoder: nn.Module, index: int, input_names: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.index = index
        self.input_names = list(input_names)
        self.last = index == int(encoder.config.num_hidden_layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        if self.last:
            return self.encoder(**kwargs).last_hidden_state
        return self.encoder(**kwargs, output_hidden_states=True).hidden_states[self.index]


def model_inputs(encoder: nn.Module) -> list[str]:
    """The inputs fed to the encoder: token types only when the model has several."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(encoder.forward).parameters
    if "token_type_ids" in params and getattr(encoder.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def load_hidden_states(folder: Path, layer: int, *, attn_implementation: str) -> HiddenStates:
    """The folder's encoder (no pooler head), in eval mode, returning layer ``layer``."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from e2ekit.text.models.pretrained import load_encoder_config

    config = load_encoder_config(folder)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if config.model_type in BERT_LIKE:
        kwargs["add_pooling_layer"] = False  # a folder's unused pooler weights are expected
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the unused-pooler load report is noise here
    hf_logging.disable_progress_bar()
    try:
        encoder = AutoModel.from_pretrained(
            str(folder), config=config, local_files_only=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    index = layer_index(layer, int(config.num_hidden_layers))
    return HiddenStates(encoder, index, model_inputs(encoder)).eval()
