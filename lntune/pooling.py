# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Mean-pooled sequence classification for checkpoints that were trained with mean pooling.

A BERT-family `*ForSequenceClassification` classifies from the [CLS] token through the checkpoint's `pooler` (a dense
layer + tanh). Sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained with *mean* pooling: their [CLS]
state was never trained to summarise the input and their pooler was never trained at all (MiniLM's pooler bias is
exactly zero). Full fine-tuning can repair that path; LN tuning and BitFit cannot move the pooler's matrix, so they
classify from an untrained projection of an untrained token. `use_mean_pooling` swaps the pooler for a masked mean of
the token states, the pooling the checkpoint was trained with; `checkpoint_pooling` reads which one that was from a
sentence-transformers folder (`1_Pooling/config.json`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

POOLING_CONFIG_KEY = "lntune_pooling"  # recorded in model.config, so a saved model says how it was pooled


class MeanPooler(nn.Module):
    """Masked mean of the token states over the sequence (replaces a [CLS] pooler; holds no parameters).

    The attention mask of the current forward is set by a pre-hook on the encoder (`use_mean_pooling`), since the
    pooler itself is called with the hidden states only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: Optional[torch.Tensor] = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _encoder_with_pooler(model: nn.Module) -> nn.Module:
    """The sub-module that owns a `pooler` attribute (e.g. `model.bert`), or raise naming what was looked for."""
    for module in model.modules():
        if isinstance(getattr(module, "pooler", None), nn.Module):
            return module
    raise ValueError(
        f"{type(model).__name__} has no `pooler` sub-module to replace: mean pooling is supported for BERT-family "
        "sequence classifiers that classify from `<encoder>.pooler` (BERT, MiniLM, ELECTRA-style models with a "
        "pooler). Use the model's own head instead (pooling='cls')."
    )


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Replace the [CLS] pooler of a BERT-family sequence classifier by a masked mean of the token states, in place.

    The old pooler's parameters leave the model (a saved checkpoint no longer holds them); `model.config` records
    `lntune_pooling="mean"`, so code that reloads the model can call this again. Returns `model`.
    """
    encoder = _encoder_with_pooler(model)
    if isinstance(encoder.pooler, MeanPooler):
        return model
    pooler = MeanPooler()
    encoder.pooler = pooler
    signature = inspect.signature(encoder.forward)

    def set_mask(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = kwargs
        pooler.attention_mask = bound.get("attention_mask")

    def clear_mask(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        pooler.attention_mask = None

    encoder.register_forward_pre_hook(set_mask, with_kwargs=True)
    encoder.register_forward_hook(clear_mask, with_kwargs=True)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, POOLING_CONFIG_KEY, "mean")
    return model


def checkpoint_pooling(model_path: str) -> Optional[str]:
    """The pooling a sentence-transformers checkpoint folder was trained with: "mean", "cls", or None if unknown."""
    path = Path(model_path)
    for candidate in (path / "1_Pooling" / "config.json", path.parent / "1_Pooling" / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            if config.get("pooling_mode_mean_tokens"):
                return "mean"
            if config.get("pooling_mode_cls_token"):
                return "cls"
            return None
    return None
