# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""One flag for Trainer users: score on the training set and keep only the Fisher-selected scalars, before step 1."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import TrainerCallback

from .estimate import fisher_scores
from .select import select_by_fisher, summarize_selection


def swap_optimizer_params(
    optimizer: torch.optim.Optimizer, swapped: dict[nn.Parameter, Optional[nn.Parameter]]
) -> int:
    """Replace old parameters by new ones (or drop them, for None) in every param group; returns how many changed.

    Meant for the moment before the first step, when the optimizer holds no state for the old tensors yet: if it
    holds state (momentum, Adam moments) for any of them, this raises and leaves the optimizer unchanged, since that
    state cannot be carried over to a tensor of another size.
    """
    stateful = [
        p for group in optimizer.param_groups for p in group["params"] if p in swapped and optimizer.state.get(p)
    ]
    if stateful:
        raise RuntimeError(
            f"swap_optimizer_params must run before the first optimizer step: the optimizer already holds state for "
            f"{len(stateful)} of the parameters to swap. Select (set_mask) before training, or build a new optimizer."
        )
    changed = 0
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if p in swapped:
                changed += 1
                if swapped[p] is not None:
                    params.append(swapped[p])
            else:
                params.append(p)
        group["params"] = params
    return changed


class FisherSelectionCallback(TrainerCallback):
    """Before the first training step: score every norm scalar by its Fisher information on the training data, keep
    the top `fraction` (or `count`), and restrict the lntune adapter to them (`LNTuneModel.set_mask`).

    Use with a model made by `get_peft_model(model, LNTuneConfig(...))`:

        trainer = Trainer(model, args, train_dataset=..., callbacks=[FisherSelectionCallback(fraction=0.2)])

    The scores use the Trainer's training DataLoader (or `dataloader`, if given) and `num_samples` samples. For
    multi-process runs, select before training instead (`fisher_scores` + `LNTuneConfig(mask=...)`): changing the
    parameter set after the model was wrapped for DDP is not supported.
    """

    def __init__(
        self,
        fraction: Optional[float] = 0.2,
        count: Optional[int] = None,
        granularity: str = "scalar",
        num_samples: Optional[int] = 1024,
        kind: str = "empirical",
        dataloader: Any = None,
        adapter_name: Optional[str] = None,
    ) -> None:
        self.fraction = None if count is not None else fraction
        self.count = count
        self.granularity = granularity
        self.num_samples = num_samples
        self.kind = kind
        self.dataloader = dataloader
        self.adapter_name = adapter_name
        self.mask: Optional[dict] = None
        self.summary: Any = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if self.mask is not None:
            return  # already selected (e.g. train() called again)
        if args.world_size > 1:
            raise RuntimeError(
                "FisherSelectionCallback runs in single-process training only; for distributed runs score first "
                "(lntune.fisher_scores with an accelerator) and pass LNTuneConfig(mask=...)."
            )
        tuner = getattr(model, "base_model", None)
        if not hasattr(tuner, "set_mask"):
            raise TypeError("FisherSelectionCallback needs a model made by get_peft_model(model, LNTuneConfig(...)).")
        loader = self.dataloader if self.dataloader is not None else train_dataloader
        loader = getattr(loader, "base_dataloader", loader)  # fisher_scores wants the loader before accelerate
        scores = fisher_scores(model, loader, num_samples=self.num_samples, kind=self.kind)
        selected = select_by_fisher(scores, fraction=self.fraction, count=self.count, granularity=self.granularity)
        self.summary = summarize_selection(selected, scores)
        # fisher_scores names the norms as in the base model, which is what set_mask expects
        mask = selected
        swapped = tuner.set_mask(mask, adapter_name=self.adapter_name)
        if optimizer is not None:
            swap_optimizer_params(optimizer, swapped)
        self.mask = mask
