# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Mean-pooled sequence classification for checkpoints that were trained with mean pooling.

A BERT-family `*ForSequenceClassification` classifies from the [CLS] token through the checkpoint's `pooler` (a dense
layer + tanh). Sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained with *mean* pooling: their [CLS]
state was never trained to summarise the input and their pooler was never trained at all (MiniLM's pooler bias is
exactly zero). Full fine-tuning can repair that path; LN tuning and BitFit cannot move the pooler's matrix, so they
classify from an untrained projection of an untrained token. `use_mean_pooling` swaps the pooler for a masked mean of
the token states, the pooling the checkpoint was trained with; `checkpoint_pooling` reads which one that was from a
sentence-transformers folder (`1_Pooling/config.json`). Such checkpoints are bi-encoders: they embed one sentence at a
time, and `use_pair_pooling` classifies a sentence pair the same way (each sentence encoded alone).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

POOLING_CONFIG_KEY = "lntune_pooling"  # recorded in model.config, so a saved model says how it was pooled


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, H] over the positions where ``mask`` [B, T] is 1."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


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
        return _masked_mean(hidden_states, mask)


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


def split_pair(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split jointly tokenized pairs ``[CLS] a [SEP] b [SEP]`` into ``[CLS] a [SEP]`` and ``[CLS] b [SEP]``.

    Segment A is every attended token of type 0, segment B every attended token of type 1 behind the row's first
    token (its [CLS]). Returns (ids_a, mask_a, ids_b, mask_b), each right-padded with the batch's pad value (the
    value of a masked position, else 0). Raises ``ValueError`` for a row with no type-1 token: a single sentence.
    """
    attended = attention_mask.bool()
    rows_a, rows_b = [], []
    for ids, keep, types in zip(input_ids, attended, token_type_ids):
        a = ids[keep & (types == 0)]
        b = ids[keep & (types == 1)]
        if b.numel() == 0:
            raise ValueError(
                "pair pooling needs sentence pairs (a second segment with token_type_ids == 1); this row has one "
                "segment. Use pooling='mean' for single-sentence tasks."
            )
        rows_a.append(a)
        rows_b.append(torch.cat([ids[:1], b]))
    masked = input_ids[~attended]
    pad = int(masked[0]) if masked.numel() else 0

    def stack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(row.numel() for row in rows)
        ids = input_ids.new_full((len(rows), width), pad)
        mask = attention_mask.new_zeros((len(rows), width))
        for i, row in enumerate(rows):
            ids[i, : row.numel()] = row
            mask[i, : row.numel()] = 1
        return ids, mask

    return (*stack(rows_a), *stack(rows_b))


def use_pair_pooling(model: nn.Module) -> nn.Module:
    """Classify sentence pairs from each sentence encoded alone, as a bi-encoder checkpoint was trained, in place.

    Sentence-embedding checkpoints (all-MiniLM-L6-v2 and the like) were trained to embed *one* sentence; a jointly
    encoded pair ``[CLS] a [SEP] b [SEP]`` is an input they never saw. With pair pooling the encoder runs on ``a`` and
    on ``b`` separately (the joint tokenization is split by ``token_type_ids``, so data pipelines are unchanged), each
    output is mean-pooled, and the classifier reads Sentence-BERT's features ``[u, v, |u - v|, u * v]`` (Reimers &
    Gurevych 2019): ``model.classifier`` is replaced by a new, freshly initialised ``Linear(4 * hidden, num_labels)``.
    The [CLS] pooler leaves the model as with `use_mean_pooling`; ``model.config`` records ``lntune_pooling="pair"``.
    Every input needs ``token_type_ids`` and two segments. Returns `model`.
    """
    encoder = _encoder_with_pooler(model)
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no `classifier` Linear layer to widen: pair pooling is supported for "
            "BERT-family sequence classifiers (`<encoder>.pooler` + `classifier`). Use pooling='mean' instead."
        )
    if getattr(encoder, "_lntune_pair_pooling", False):
        return model
    hidden = classifier.in_features
    head = nn.Linear(4 * hidden, classifier.out_features).to(classifier.weight.device, classifier.weight.dtype)
    std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
    nn.init.normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    model.classifier = head
    encoder.pooler = MeanPooler()  # the untrained [CLS] pooler leaves; pooling happens per segment below
    encode = encoder.forward
    signature = inspect.signature(encode)

    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        extra = dict(bound.pop("kwargs", {}))
        input_ids, mask, types = (bound.pop(key, None) for key in ("input_ids", "attention_mask", "token_type_ids"))
        if input_ids is None or types is None:
            raise ValueError(
                "pair pooling encodes each sentence of a pair alone and needs `input_ids` and `token_type_ids` (the "
                "tokenizer's output for a sentence pair); got "
                f"{'no input_ids' if input_ids is None else 'no token_type_ids'}."
            )
        if mask is None:
            mask = torch.ones_like(input_ids)
        bound.pop("position_ids", None)  # positions restart in each segment
        ids_a, mask_a, ids_b, mask_b = split_pair(input_ids, mask, types)
        extra.update({k: v for k, v in bound.items() if k != "self"})
        extra["return_dict"] = True
        out_a = encode(input_ids=ids_a, attention_mask=mask_a, **extra)
        out_b = encode(input_ids=ids_b, attention_mask=mask_b, **extra)
        u = _masked_mean(out_a.last_hidden_state, mask_a)
        v = _masked_mean(out_b.last_hidden_state, mask_b)
        pooled = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        return BaseModelOutputWithPooling(last_hidden_state=out_a.last_hidden_state, pooler_output=pooled)

    encoder.forward = forward
    encoder._lntune_pair_pooling = True
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, POOLING_CONFIG_KEY, "pair")
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
