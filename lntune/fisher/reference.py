# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The yardstick: the same scores as :func:`lntune.fisher.fisher_scores`, one sample at a time (batch size 1,
padding removed) with plain autograd. Slow; it exists to test the batched path (``tests/fisher``,
``bench/fisher.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lntune.fisher.batches import (
    attention_mask_of,
    batch_size_of,
    call_model,
    is_encoder_decoder,
    map_tensors,
    prepare_inputs,
    split_batch,
)
from lntune.fisher.estimate import ScoringMode, finish_scores, norms_to_score, validate_args
from lntune.fisher.likelihood import detect_task, reference_nll
from lntune.fisher.per_sample import PARAM_NAMES
from lntune.fisher.scores import FisherScores


def _is_dataset(data: Any) -> bool:
    return isinstance(data, torch.utils.data.Dataset) or hasattr(data, "column_names")


# Keys whose dim 1 runs over the encoder (or only) input tokens, and over the decoder tokens.

_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "special_tokens_mask")

_DECODER_KEYS = tuple("decoder_" + key for key in _TOKEN_KEYS)


def _iter_samples(data: Any, enc_dec: bool = False) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """(inputs, labels) of single samples, batch dim 1, padding removed (by ``attention_mask`` for the token inputs
    and token labels; by ``decoder_attention_mask``, when given, for the decoder inputs and seq2seq labels)."""
    if _is_dataset(data):
        for i in range(len(data)):
            example = data[i]
            batch = map_tensors(
                {k: torch.as_tensor(v) for k, v in example.items()} if isinstance(example, Mapping) else example,
                lambda t: t.unsqueeze(0),
            )
            yield split_batch(batch)
        return
    for batch in data:
        inputs, labels = split_batch(batch)
        size = batch_size_of(inputs)
        mask = attention_mask_of(inputs)
        dec_mask = attention_mask_of(inputs, "decoder_attention_mask")
        for i in range(size):
            keep = None if mask is None else mask[i].bool()
            dec_keep = None if dec_mask is None else dec_mask[i].bool()
            sample = _pick_sample(inputs, i, size)
            if isinstance(sample, dict):
                for key in sample:
                    if key in _TOKEN_KEYS or key in _DECODER_KEYS:
                        sample[key] = _drop_padding(sample[key], dec_keep if key in _DECODER_KEYS else keep)
            label = None if labels is None else _pick_sample(labels, i, size)
            if label is not None and label.dim() >= 2 and not label.is_floating_point():  # token labels
                label = _drop_padding(label, dec_keep if enc_dec else keep)
            yield sample, label


def _pick_sample(obj: Any, index: int, size: int) -> Any:
    """Sample ``index`` of every batch tensor in ``obj`` (batch dim kept, size 1)."""
    return map_tensors(obj, lambda t: t if t.dim() == 0 or t.shape[0] != size else t[index : index + 1])


def _drop_padding(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is None or t.dim() < 2:
        return t
    if t.shape[1] != keep.shape[0]:
        raise ValueError(
            f"fisher_scores_reference: a token tensor of shape {tuple(t.shape)} does not match its attention mask "
            f"of length {keep.shape[0]}"
        )
    return t[:, keep]


def fisher_scores_reference(
    model: nn.Module,
    data: Any,
    num_samples: int | None = None,
    kind: str = "empirical",
    task: str | None = None,
    seed: int = 0,
) -> FisherScores:
    """Same scores as :func:`fisher_scores`, one sample at a time (batch size 1, padding removed), plain autograd.

    ``data`` is a loader/iterable of batches (split into samples) or a dataset of single examples. Slow; it is the
    yardstick for the batched implementation in tests and ``bench/fisher.py``.
    """
    validate_args(kind, task, num_samples)
    norms = norms_to_score(model)
    owners = [
        (info.name, pname)
        for info in norms
        for pname in PARAM_NAMES
        if isinstance(getattr(info.module, pname, None), nn.Parameter)
    ]
    params = [getattr(info.module, pname) for info in norms for pname in PARAM_NAMES if (info.name, pname) in owners]
    sums = {info.name: {} for info in norms}
    count = 0
    with ScoringMode(model, params):
        device = next(model.parameters()).device
        for inputs, labels in _iter_samples(data, is_encoder_decoder(model)):
            if num_samples is not None and count >= num_samples:
                break
            inputs = map_tensors(inputs, lambda t: t.to(device))
            labels = None if labels is None else labels.to(device)
            inputs = prepare_inputs(model, inputs, labels)
            logits = call_model(model, inputs)
            if task is None:
                task = detect_task(model, inputs, labels, logits)
            nll = reference_nll(task, kind, logits, labels, inputs, seed, count)
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            for (name, pname), p, grad in zip(owners, params, grads):
                sq = torch.zeros_like(p, dtype=torch.float64) if grad is None else grad.double().square()
                sums[name][pname] = sums[name].get(pname, 0) + sq
            count += 1
    if count == 0:
        raise ValueError("fisher_scores_reference: the data yielded no samples; pass non-empty data")
    return finish_scores(sums, count, norms, kind, task)


__all__ = [
    "fisher_scores_reference",
]
