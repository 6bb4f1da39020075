# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Head warm-up before Fisher scoring.

A freshly initialised task head makes the loss gradient at the norms mostly noise: on a regression task (GLUE STS-B)
the first updates only learn the label mean, and a Fisher score taken at that point ranks the norms by how much they
can move the mean, not by how useful they are for the task. ``warm_up_head`` trains the head alone for a few steps so
that the scores are taken at a sensible operating point. The backbone stays frozen, so a step costs about one forward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lntune.assets import HEAD_NAMES
from lntune.fisher.batches import map_tensors


def head_parameters(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> list[nn.Parameter]:
    """Parameters of the modules whose dotted name contains one of ``head_names`` as a component.

    peft's ``modules_to_save`` wrappers are handled: only the active trainable copy is returned, not the original.
    """
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        parts = name.split(".")
        if not any(part in head_names for part in parts) or "original_module" in parts:
            continue
        if id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def warm_up_head(
    model: nn.Module,
    loader: Iterable,
    steps: int,
    learning_rate: float = 1e-3,
    head: Iterable[nn.Parameter] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train only the task head of ``model`` for ``steps`` optimizer steps on ``loader`` (cycled if shorter).

    ``loader`` yields dicts that the model accepts with ``labels`` in them (the model computes the loss, as
    transformers models do). ``head`` defaults to :func:`head_parameters`. AdamW with a constant learning rate; the
    other parameters keep their values and their ``requires_grad`` flags, and the train/eval mode is restored.
    Returns ``{"first_loss", "last_loss", "steps"}`` (losses averaged over the first/last tenth of the steps).

    Distributed runs: give every process the same loader (unprepared) and the same seed; every process then takes
    the same steps and ends with the same head, no communication needed.
    """
    if steps < 1:
        raise ValueError(f"warm_up_head: steps must be >= 1, got {steps}")
    params = list(head) if head is not None else head_parameters(model)
    if not params:
        raise ValueError(
            f"warm_up_head: found no head parameters (module names containing one of {HEAD_NAMES}); pass head= with "
            "the parameters of the model's task head"
        )
    device = params[0].device
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    losses: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, desc="head warm-up", leave=False)
    try:
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.train()
        batches = iter(loader)
        first = next(batches, None)
        if first is None:
            raise ValueError("warm_up_head: the loader yielded no batches; pass a loader over a non-empty dataset")
        for batch in itertools.islice(itertools.cycle(itertools.chain([first], batches)), steps):
            if not hasattr(batch, "items"):
                raise TypeError(
                    f"warm_up_head: batches must be dicts of model inputs with `labels`, got {type(batch).__name__}"
                )
            out = model(**map_tensors(batch, lambda t: t.to(device)))
            loss = getattr(out, "loss", None)
            if loss is None:
                raise ValueError("warm_up_head: the model returned no loss; the batches must contain `labels`")
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"warm_up_head: non-finite loss {loss.item()} at step {len(losses)}; lower learning_rate"
                )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
    finally:
        bar.close()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for m, flag in training.items():
            m.training = flag
    tenth = max(1, math.ceil(len(losses) / 10))
    return {
        "first_loss": sum(losses[:tenth]) / tenth,
        "last_loss": sum(losses[-tenth:]) / tenth,
        "steps": float(len(losses)),
    }
