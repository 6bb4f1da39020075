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
from .backbone import as_encoder
from .bank import LNBank

__all__ = ["LateSelectionLNBank", "default_selection_layer", "find_blocks", "late_norm_names"]


class _Stop(Exception):
    """Raised by the capture hook to end a frozen pass at block `L` (the later blocks are not needed)."""


def find_blocks(encoder: nn.Module) -> tuple[str, nn.Module]:
    """`(name, container)` of the backbone's transformer blocks: the longest `nn.ModuleList` / `nn.Sequential` whose
    children all have one type (HF `encoder.layer`, timm `blocks`). Raises a ValueError if there is none."""
    best: Optional[tuple[str, nn.Module]] = None
    for name, module in encoder.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ValueError(f"Found no stack of transformer blocks in {type(encoder).__name__}.")
    return best


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
        super().__init__(encoder, num_classes, key_mode="task", lntune_config=config, router="lda", **kwargs)
        self.selection_layer = selection_layer
        self.block = find_blocks(encoder)[1][selection_layer]
        self.last_selection = torch.zeros(0, dtype=torch.long)
        self.last_queries = torch.zeros(0, self.dim)

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

    def _pool(self, hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The pooled token of a block input: [CLS] (vision, or `pooling="cls"`) or the masked mean (text)."""
        if getattr(self.encoder, "pooling", "cls") == "cls" or self.encoder.modality == "image":
            return hidden[:, 0].float()
        if mask is None:
            return hidden.mean(dim=1).float()
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return ((hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).float()

    @contextmanager
    def _block_hook(self, fn) -> Iterator[None]:
        """Call `fn(hidden)` with the hidden states entering block `L` during the forwards of the `with` body."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            fn(args[0] if args else kwargs["hidden_states"])

        handle = self.block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def selection_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Frozen pooled features at the input of block `L` (the pass stops there: `L` blocks of compute)."""
        out: list[torch.Tensor] = []
        mask = inputs.get("attention_mask")

        def capture(hidden: torch.Tensor) -> None:
            out.append(self._pool(hidden, mask))
            raise _Stop

        with self._block_hook(capture):
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
        mask = inputs.get("attention_mask")
        layers = [layer for name, layer in self.lntune_layers()]
        chosen: list[torch.Tensor] = []

        def route(hidden: torch.Tensor) -> None:
            self.last_queries = self._pool(hidden, mask)
            tasks = self.select(self.last_queries, upto).cpu()
            chosen.append(tasks)
            names = [self.adapter_name(int(t)) for t in tasks.tolist()]
            for layer in layers:
                layer.set_routing(names)

        try:
            with self._block_hook(route):
                features = self.model(**inputs)
        finally:
            for layer in layers:
                layer.set_routing(None)
        self.last_selection = chosen[0]
        return features, chosen[0]
