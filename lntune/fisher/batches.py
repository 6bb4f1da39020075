# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Batches as ``fisher_scores`` reads them: inputs and labels, sizes, padding masks and token counts, and the model
inputs completed as the model's own training forward would (seq2seq decoder inputs, left-padding positions).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Model inputs and labels of one batch: a mapping (``labels``/``label`` key), an ``(inputs, labels)`` pair or a
    bare input tensor."""
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = inputs.pop("label", None)
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return inputs, labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        labels = batch[1] if batch[1] is None or isinstance(batch[1], torch.Tensor) else torch.as_tensor(batch[1])
        return batch[0], labels
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(
        f"fisher_scores: cannot read a batch of type {type(batch).__name__}; yield dicts of tensors (with a 'labels' "
        "key), (inputs, labels) pairs or input tensors"
    )


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        for key in ("input_ids", "pixel_values", "inputs_embeds"):
            value = inputs.get(key)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value.shape[0]
    raise ValueError("fisher_scores: cannot tell the batch size: the batch holds no input tensor")


def map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def take_samples(obj: Any, n: int, batch_size: int) -> Any:
    """First ``n`` samples of every tensor whose leading dim is the batch."""
    return map_tensors(obj, lambda t: t[:n] if t.dim() > 0 and t.shape[0] == batch_size else t)


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out["logits"]
    return logits


def attention_mask_of(inputs: Any, key: str = "attention_mask") -> torch.Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get(key)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def seq_len(inputs: Any, prefix: str = "") -> int | None:
    """Token count of the (encoder or, with ``prefix="decoder_"``, decoder) inputs, read from their shapes."""
    if not isinstance(inputs, Mapping):
        return None
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        value = inputs.get(prefix + key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    return None


def base_of(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_encoder_decoder(model: nn.Module) -> bool:
    base = base_of(model)
    if not getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    get_enc, get_dec = getattr(base, "get_encoder", None), getattr(base, "get_decoder", None)
    if not (callable(get_enc) and callable(get_dec)):
        return False
    try:
        enc, dec = get_enc(), get_dec()
    except (AttributeError, NotImplementedError, TypeError):  # transformers' generic lookups raise these
        return False
    return isinstance(enc, nn.Module) and isinstance(dec, nn.Module) and enc is not dec and enc is not base


def model_task(model: nn.Module) -> str | None:
    """Task told by the model class alone (None when the batch has to decide)."""
    base = base_of(model)
    cls_name = type(base).__name__
    if cls_name.endswith("ForTokenClassification"):
        return "token_classification"
    if is_encoder_decoder(base) and cls_name.endswith(("ForConditionalGeneration", "Seq2SeqLM", "LMHeadModel")):
        return "seq2seq_lm"
    if cls_name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    return None


def _decoder_start_id(base: nn.Module) -> int | None:
    for cfg in (getattr(base, "config", None), getattr(base, "generation_config", None)):
        start = getattr(cfg, "decoder_start_token_id", None) if cfg is not None else None
        if start is not None:
            return int(start)
    return None


def _decoder_inputs_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``decoder_input_ids`` as the seq2seq models build them from ``labels``: shifted right behind the decoder start
    token, ``-100`` replaced by the pad id (``prepare_decoder_input_ids_from_labels`` when the model has it)."""
    base = base_of(model)
    start = _decoder_start_id(base)
    pad = getattr(getattr(base, "config", None), "pad_token_id", None)
    if start is None:
        raise ValueError(
            f"fisher_scores: {type(base).__name__} has no decoder_start_token_id (config or generation_config), so "
            "decoder_input_ids cannot be built from the labels; set config.decoder_start_token_id or pass "
            "decoder_input_ids in the batch"
        )
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare) and getattr(base.config, "decoder_start_token_id", None) is not None:
        return prepare(labels=labels)
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill_(shifted == IGNORE_INDEX, 0 if pad is None else int(pad))


def _accepts(model: nn.Module, name: str) -> bool:

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def prepare_inputs(model: nn.Module, inputs: Any, labels: torch.Tensor | None) -> Any:
    """The model inputs of a batch, completed as the model's own training forward would complete them.

    Encoder-decoder models get ``decoder_input_ids`` from the labels (the labels are not passed to the model: the
    loss is formed here). Causal LMs with left padding get ``position_ids`` counted from the first real token (as
    ``generate`` does), so a sample's positions do not depend on how much padding precedes it.
    """
    if not isinstance(inputs, Mapping):
        return inputs
    if (
        labels is not None
        and "decoder_input_ids" not in inputs
        and "decoder_inputs_embeds" not in inputs
        and is_encoder_decoder(model)
    ):
        if labels.dim() != 2 or labels.is_floating_point():
            raise ValueError(
                f"fisher_scores: an encoder-decoder batch needs token labels [batch, target length] to build the "
                f"decoder inputs from, got labels of shape {tuple(labels.shape)} ({labels.dtype}); pass "
                "decoder_input_ids in the batch"
            )
        inputs = {**inputs, "decoder_input_ids": _decoder_inputs_from_labels(model, labels)}
    mask = attention_mask_of(inputs)
    if (
        mask is not None
        and "position_ids" not in inputs
        and bool((mask[:, 0] == 0).any())
        and model_task(model) == "causal_lm"
        and _accepts(model, "position_ids")
    ):
        inputs = {**inputs, "position_ids": (mask.long().cumsum(-1) - 1).clamp_(min=0)}
    return inputs


__all__ = [
    "IGNORE_INDEX",
    "attention_mask_of",
    "base_of",
    "batch_size_of",
    "call_model",
    "is_encoder_decoder",
    "map_tensors",
    "model_task",
    "prepare_inputs",
    "seq_len",
    "split_batch",
    "take_samples",
]
