# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The one-pass LN bank with late selection: pick the task once, at block ``L``, from the frozen model's own features.

Per-layer selection on each norm's raw [CLS] input (:mod:`~lntune.continual.single_pass`) fails because the early
layers hold little task identity and their wrong choices change everything after them. This bank adapts only the norms
of blocks ``L..`` (and the norms after the last block): blocks ``0..L-1`` are the frozen model, so at the input of
block ``L`` the sample's pooled token is exactly the frozen layer-``L`` feature. A forward pre-hook on block ``L``
classifies it with shrunk LDA (:class:`~lntune.continual.router.ClassStatistics`, fitted on frozen layer-``L``
features of each task's training samples, streamed, no sample kept), maps the class to its task and routes the
remaining norms with that task's LN values (``LNTuneLayer.set_routing``). One forward pass in all; stage 1 trains
exactly the late norms.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn

from ..norms import is_norm
from ..tuner import LNTuneConfig
from .backbone import as_encoder, find_blocks, pool_tokens
from .bank import LNBank

__all__ = ["LateSelectionLNBank", "default_selection_layer", "find_blocks", "late_norm_names"]


class _Stop(Exception):
    """Raised by the capture hook to end a frozen pass at block `L` (the later blocks are not needed)."""


def default_selection_layer(encoder: nn.Module) -> int:
    """The input of the last block (11 of ViT-Ti's 12, 5 of MiniLM-L6's 6): frozen-feature task identity grows with
    depth (LDA task-id on split CIFAR-10: 83.4% at block 9, 85.6% at 10, 88.2% at 11; recipes/continual/README.md),
    and the last block plus the final norm still carry the task's LN values."""
    return len(find_blocks(as_encoder(encoder))[1]) - 1


def late_norm_names(encoder: nn.Module, layer: int) -> list[str]:
    """Names (in `encoder.named_modules()`) of the norms of blocks `layer..` and of the norms after the blocks."""
    blocks_name, blocks = find_blocks(encoder)
    check_layer(layer, len(blocks))
    names, after = [], False
    for name, module in encoder.named_modules():
        if name == blocks_name:
            after = True
        if not is_norm(module):
            continue
        if name.startswith(blocks_name + "."):
            if int(name[len(blocks_name) + 1 :].split(".")[0]) >= layer:
                names.append(name)
        elif after:
            names.append(name)
    return names


def check_layer(layer: Any, num_blocks: int) -> int:
    """`layer` as an int, or a ValueError unless `1 <= layer < num_blocks` (a selection point inside the stack)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_blocks:
        raise ValueError(
            f"selection_layer must be an int in [1, {num_blocks - 1}] (the task is picked at the input of that "
            f"block of the {num_blocks}; 0 would see only the embeddings), got {layer!r}."
        )
    return layer


class LateSelectionLNBank(LNBank):
    """
    One-pass LN bank: frozen blocks `0..L-1`, an LDA task choice from the pooled token entering block `L`, then
    blocks `L..` with each row's task LN values (see the module docstring). No keys; `router` is always `"lda"`.

    Args:
        encoder / num_classes / lntune_config / prefix / seed / shrinkage: as [`LNBank`]; `lntune_config`'s
            `target_modules` is replaced by the late norms.
        selection_layer (`int`): `L`, the block at whose input the task is chosen (`1 <= L < number of blocks`).

    **Attributes**:
        - **selection_layer** (`int`) and **late_norms** (`list[str]`) -- `L` and the adapted norms.
        - **last_selection** / **last_queries** (`torch.Tensor`) -- the task chosen for each row in the last `infer`
          and the frozen layer-`L` features it was chosen from.
    """

    one_pass = True

    def __init__(
        self, encoder: nn.Module, num_classes: int, selection_layer: Optional[int] = None, **kwargs: Any
    ) -> None:
        if kwargs.pop("router", "lda") != "lda" or kwargs.pop("key_mode", "task") != "task":
            raise ValueError("LateSelectionLNBank routes with LDA on layer-L features: router='lda', no keys.")
        encoder = as_encoder(encoder)
        if selection_layer is None:
            selection_layer = default_selection_layer(encoder)
        self.late_norms = late_norm_names(encoder, selection_layer)
        template = kwargs.pop("lntune_config", None) or LNTuneConfig()
        config = copy.deepcopy(template)
        config.target_modules = self.late_norms
        layers = kwargs.get("query_layers", 1)
        if not isinstance(layers, bool) and isinstance(layers, int) and layers > selection_layer:
            raise ValueError(
                f"query_layers={layers} would read the inputs of blocks {selection_layer - layers + 1}..{selection_layer}"
                f", but selection happens at block {selection_layer}: use query_layers <= {selection_layer}."
            )
        super().__init__(encoder, num_classes, key_mode="task", lntune_config=config, router="lda", **kwargs)
        self.selection_layer = selection_layer
        blocks = find_blocks(encoder)[1]
        # blocks L-k+1..L (a plain list: the backbone registers them already); the last one routes
        self._selection_blocks = [
            blocks[i] for i in range(selection_layer - self.query_layers + 1, selection_layer + 1)
        ]
        self.last_selection = torch.zeros(0, dtype=torch.long)
        self.last_queries = torch.zeros(0, self.query_dim)

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "selection_layer": self.selection_layer}

    def _add_keys(self, t: int, classes: list[int]) -> None:
        """No keys: the LDA statistics on layer-L features route."""

    def _num_key_sets(self) -> int:
        return self.num_tasks

    def key_parameters(self, t: int) -> list[nn.Parameter]:
        return []

    def select(self, queries: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        """Task of each row of frozen layer-`L` features `queries` (the LDA-predicted class's task) among `0..upto`."""
        if self.num_tasks == 0:
            raise ValueError("The bank has no task yet: add_task() first.")
        return self.task_scores(queries, upto).argmax(dim=-1)

    @contextmanager
    def _block_hook(self, fn, mask: Optional[torch.Tensor]) -> Iterator[None]:
        """Call `fn(query)` when the forwards of the `with` body enter block `L`; `query` is the pooled token entering
        block `L` ([CLS], or the masked mean for mean-pooled text), preceded with `query_layers = k > 1` by the pooled
        tokens entering blocks `L-k+1..L-1`."""
        pooled: list[torch.Tensor] = []
        last = len(self._selection_blocks) - 1

        def make_hook(i: int):
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                pooled.append(pool_tokens(self.encoder, args[0] if args else kwargs["hidden_states"], mask))
                if i == last:
                    query = torch.cat(pooled, dim=-1)
                    pooled.clear()
                    fn(query)

            return hook

        handles = [
            b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(self._selection_blocks)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def selection_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Frozen pooled features at the input of block `L` (the pass stops there: `L` blocks of compute); with
        `query_layers = k`, those entering blocks `L-k+1..L`, concatenated."""
        out: list[torch.Tensor] = []

        def capture(query: torch.Tensor) -> None:
            out.append(query)
            raise _Stop

        with self._block_hook(capture, inputs.get("attention_mask")):
            try:
                self._forward(inputs, None)
            except _Stop:
                pass
        return out[0]

    def infer(
        self, queries: Optional[torch.Tensor] = None, upto: Optional[int] = None, topk: int = 1, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, selected task) from one pass; `queries` and `topk` are ignored (selection is inside the pass)."""
        if self.num_tasks == 0:
            raise ValueError("The bank has no task yet: add_task() first.")
        self.validate()
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        layers = [layer for name, layer in self.lntune_layers()]
        chosen: list[torch.Tensor] = []

        def route(query: torch.Tensor) -> None:
            self.last_queries = query
            tasks = self.select(self.last_queries, upto).cpu()
            chosen.append(tasks)
            names = [self.adapter_name(int(t)) for t in tasks.tolist()]
            for layer in layers:
                layer.set_routing(names)

        try:
            with self._block_hook(route, inputs.get("attention_mask")):
                features = self.model(**inputs)
        finally:
            for layer in layers:
                layer.set_routing(None)
        self.last_selection = chosen[0]
        return features, chosen[0]
