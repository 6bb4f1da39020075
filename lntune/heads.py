# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Task heads: find a model's output layer and start its bias at the label prior.

A new classification or regression head starts with a zero bias, so its first outputs are centred on 0. On a
regression task whose labels sit far from 0 (GLUE STS-B: 0-5, mean about 2.7) the first updates of every trainable
parameter go to moving the output mean; with a method that trains few parameters at a high learning rate (LN tuning,
BitFit) that early push lands in the norms. Starting the bias at the training labels' mean (regression) or their log
class frequencies (classification) removes that phase; the weights stay as initialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lntune.assets import HEAD_NAMES

__all__ = ["init_head_bias", "output_layer"]


def output_layer(model: nn.Module, num_outputs: int, head_names: Sequence[str] = HEAD_NAMES) -> nn.Linear:
    """The last ``nn.Linear`` with ``num_outputs`` outputs inside a module named after a task head.

    BERT's ``classifier``, RoBERTa's ``classifier.out_proj``, GPT-2/Llama's ``score``. Meant for the base model
    before a PEFT wrapper is built (a wrapped model has copies of the head: the last one found would be returned).
    """
    found = None
    for name, module in model.named_modules():
        parts = name.split(".")
        if (
            isinstance(module, nn.Linear)
            and module.out_features == num_outputs
            and any(p in head_names for p in parts)
        ):
            found = module
    if found is None:
        raise ValueError(
            f"output_layer: no nn.Linear with {num_outputs} outputs under a module named one of {HEAD_NAMES}; "
            "this model's task head is named differently (pass head_names=)"
        )
    return found


def init_head_bias(model: nn.Module, labels: Sequence[float], num_labels: int) -> list[float]:
    """Set the bias of the model's output layer to the prior of ``labels`` and return it.

    ``num_labels == 1`` (regression): the mean label. Otherwise: log class frequencies (each class counted at least
    once, so an absent class gets a finite bias), shifted to mean zero. Call it on the base model before a PEFT
    wrapper is built, so that every method starts from the same head.
    """
    if len(labels) == 0:
        raise ValueError("init_head_bias: no labels given; pass the training labels")
    layer = output_layer(model, num_labels)
    if layer.bias is None:
        raise ValueError("init_head_bias: the output layer has no bias to initialise")
    values = torch.as_tensor(list(labels), dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("init_head_bias: the labels contain NaN or inf")
    if num_labels == 1:
        prior = values.mean().reshape(1)
    else:
        classes = values.long()
        if (classes < 0).any() or (classes >= num_labels).any():
            raise ValueError(f"init_head_bias: class labels must be in 0..{num_labels - 1}")
        counts = torch.bincount(classes, minlength=num_labels).double().clamp(min=1.0)
        prior = counts.log()
        prior = prior - prior.mean()
    with torch.no_grad():
        layer.bias.copy_(prior.to(layer.bias.dtype))
    return prior.tolist()
