# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Per-row adapter choice for one batched forward (`model(**batch, adapter_names=[...])`): which rows use which
adapter, in the norms and in `modules_to_save` heads, including batches that `generate` expanded per beam."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

BASE_ADAPTER = "__base__"  # the name that routes a row of a mixed batch to the base model


@dataclass
class Routing:
    """Per-sample adapter choice for one batched forward: which rows use which adapter.

    Built once per forward (not per layer); the row-index tensors are built once per (row count, device) and reused by
    every layer. `expand` > 1 (set for `generate` with beam search or `num_return_sequences`) lets a layer see the
    batch with each row repeated `expand` times in a row, as transformers' `_expand_inputs_for_generation` makes it;
    the encoder of an encoder-decoder model still sees the un-expanded batch.
    """

    names: list[str]
    expand: int = 1
    _groups: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_names(cls, names: list[str], expand: int = 1) -> Routing:
        return cls(names=list(names), expand=max(1, int(expand)))

    def groups_for(self, rows: int, device: torch.device, where: str = "a norm") -> list[tuple[str, torch.Tensor]]:
        """(adapter name, row indices) for a batch of `rows` rows, one entry per distinct name."""
        key = (rows, device)
        if key not in self._groups:
            n = len(self.names)
            if rows == n:
                repeat = 1
            elif self.expand > 1 and rows == n * self.expand:
                repeat = self.expand
            else:
                hint = (
                    f" (generate expanded each row {self.expand} times)"
                    if self.expand > 1
                    else " (for beam search or num_return_sequences set only in the model's generation_config, pass "
                    "num_beams=/num_return_sequences= to generate explicitly)"
                )
                raise ValueError(
                    f"adapter_names has {n} entries but the batch reaching {where} has {rows} rows: pass one adapter "
                    f"name per sample{hint}."
                )
            order: dict[str, list[int]] = {}
            for row in range(rows):
                order.setdefault(self.names[row // repeat], []).append(row)
            self._groups[key] = [
                (name, torch.tensor(idx, dtype=torch.long, device=device)) for name, idx in order.items()
            ]
        return self._groups[key]


def is_checkpointing(model: nn.Module) -> bool:
    """Whether transformers' activation (gradient) checkpointing is on, under either attribute name."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if attr in dir(type(model)):
            return bool(getattr(model, attr))
    return False


def generation_expand_size(kwargs: dict) -> int:
    """How many times `generate` repeats each input row (beam search, `num_return_sequences`), from its kwargs."""
    config = kwargs.get("generation_config")
    sizes = [kwargs.get(k, getattr(config, k, None)) for k in ("num_beams", "num_return_sequences")]
    return max([1, *(int(s) for s in sizes if isinstance(s, int))])


def routed_head_forward(head: ModulesToSaveWrapper, routing: Routing):
    """A forward for a `modules_to_save` wrapper that sends each row of its first input through its adapter's copy."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("adapter_names", None)
        if head.disable_adapters:
            return head.original_module(x, *args, **kwargs)

        def run(name: str, rows: torch.Tensor) -> Any:
            module = head.modules_to_save[name] if name in head.modules_to_save else head.original_module
            return module(rows, *args, **kwargs)

        groups = routing.groups_for(x.shape[0], x.device, where="a modules_to_save module")
        if len(groups) == 1:
            return run(groups[0][0], x)
        out = None
        for name, rows in groups:
            ys = run(name, x.index_select(0, rows))
            if not isinstance(ys, torch.Tensor):
                raise TypeError(
                    f"adapter_names can route a modules_to_save module only if it returns a tensor, but "
                    f"{type(head.original_module).__name__} returned {type(ys).__name__}."
                )
            if out is None:
                out = ys.new_empty((x.shape[0], *ys.shape[1:]))
            out.index_copy_(0, rows, ys)
        return out

    return forward
