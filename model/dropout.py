"""Dropout for fine-tuning a pretrained decoder on a small catalogue.

ML-100K's valid curve peaks after about two epochs and falls, the curve of a model that overfits.
SASRec, the sequential model it is measured against, trains with dropout 0.5. The attention
layers' own dropout (`attention_dropout`) does not exist in flex_attention, the packed GPU rows'
attention; residual dropout does: GPT-2's resid_pdrop / embd_pdrop, on the token embeddings and on
each attention and MLP output before it joins the residual stream. The pretrained Llama-style
models carry no such modules, so forward hooks add them; they act in training mode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.fastpath import base_model, decoder_layers
from thinkrec.errors import ThinkRecError


def check_dropout(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ThinkRecError(f"{name} must be in [0, 1), not {p}")


def set_attention_dropout(model, p: float) -> None:
    """Dropout on the attention weights. Each attention layer keeps its own copy of
    config.attention_dropout, read at construction, so both are set."""
    check_dropout("attention_dropout", p)
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p
        if hasattr(module, "config") and hasattr(module.config, "attention_dropout"):
            module.config.attention_dropout = p


def add_residual_dropout(model, p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Dropout p on the input embeddings and on every decoder layer's attention and MLP outputs,
    while the model is in training mode. Returns the hooks' handles (`remove()` takes them off);
    p = 0 adds none."""
    check_dropout("residual_dropout", p)
    if p == 0:
        return []
    layers = decoder_layers(model)
    if not layers or not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        raise ThinkRecError(f"residual_dropout: {type(base_model(model)).__name__} has no self_attn/mlp decoder layers")

    def drop(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention: (output, weights)
            return (F.dropout(output[0], p, True), *output[1:])
        return F.dropout(output, p, True)

    modules = [base_model(model).get_input_embeddings()]
    modules += [sub for layer in layers for sub in (layer.self_attn, layer.mlp)]
    return [m.register_forward_hook(drop) for m in modules]
