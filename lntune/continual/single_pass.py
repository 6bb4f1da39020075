# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The single-pass LN bank (the official code's ``single_stage``): per-layer task selection inside the forward pass.

Every norm layer has one key per task and picks, per sample, the task whose key is closest to the first ([CLS]) token
of its own input, so inference is one pass with no query pass. Built on the tuner's public per-norm routing: forward
pre-hooks on the ``LNTuneLayer``s call ``layer.set_routing(names)`` for that layer's forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..tuner import BASE_ADAPTER, LNTuneLayer
from .bank import LNBank
from .keys import orthogonal_init

__all__ = ["SinglePassLNBank"]


class SinglePassLNBank(LNBank):
    """
    The single-pass variant: every norm layer has one key per task and picks, per sample, the task whose key is
    closest (cosine) to the first token ([CLS]) of *its own input*; one forward pass, no query pass.

    Selection happens in forward pre-hooks on the `LNTuneLayer`s, which set the layer's `routing` for the duration of
    its forward (`LNTuneLayer.set_routing`, the per-norm form of `adapter_names`). In training (`task_features`) every
    layer runs task `t` and the hooks return the layer keys' loss: the negative cosine similarity between `k_{l,t}`
    and the layer's [CLS] input, averaged over layers, added to the cross-entropy as in the official code.

    A norm whose input is not a `(batch, tokens, dim)` sequence (e.g. timm's per-head `q_norm`) reuses the choice of
    the previous norm. `key_mode` must be `"task"`.

    **Attributes**:
        - **layer_keys** (`nn.ModuleList`) -- `layer_keys[t][l]` is the key of task `t` at the `l`-th adapted norm.
        - **last_selection** (`list[torch.Tensor]`) -- per-layer task choices of the last inference pass.
    """

    one_pass = True

    def __init__(self, encoder: nn.Module, num_classes: int, key_mode: str = "task", **kwargs: Any) -> None:
        if key_mode != "task":
            raise ValueError(
                f"SinglePassLNBank keys are per layer and per task: key_mode must be 'task', got {key_mode!r}."
            )
        if kwargs.get("router", "keys") != "keys":
            raise ValueError(
                f"SinglePassLNBank selects with its layer keys: router must be 'keys', got {kwargs['router']!r}."
            )
        super().__init__(encoder, num_classes, key_mode="task", **kwargs)
        self.layer_keys = nn.ModuleList()
        self.last_selection: list[torch.Tensor] = []

    def _num_key_sets(self) -> int:
        return len(self.layer_keys)

    def _add_keys(self, t: int, classes: list[int]) -> None:
        g = self._key_generator(t)
        keys = nn.ParameterList()
        for i, (_, layer) in enumerate(self.lntune_layers()):
            dim = layer.get_base_layer().weight.numel()
            existing = torch.stack([self.layer_keys[s][i] for s in range(t)]) if t else None
            keys.append(nn.Parameter(orthogonal_init(1, dim, existing, g)[0].to(self.device), requires_grad=False))
        self.layer_keys.append(keys)

    def key_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.layer_keys[self.check_task(t)])

    def _named_state_parameters(self) -> dict[str, torch.Tensor]:
        out = super()._named_state_parameters()
        out = {k: v for k, v in out.items() if not k.startswith("keys.")}
        out.update({f"layer_keys.{t}.{i}": k for t, ks in enumerate(self.layer_keys) for i, k in enumerate(ks)})
        return out

    def select(self, queries: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        raise TypeError("SinglePassLNBank selects per layer inside the forward pass; use infer() instead.")

    def key_loss(self, queries: torch.Tensor, t: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise TypeError(
            "SinglePassLNBank learns its layer keys together with the LNs (task_features returns the loss)."
        )

    @contextmanager
    def _selection_hooks(
        self, train_task: Optional[int], upto: int, tokens: Optional[dict[int, torch.Tensor]] = None
    ) -> Iterator[list[torch.Tensor]]:
        """Register the per-layer selection hooks for one forward; yields the list the key similarities go into.
        With `tokens` (training routing only), each sequence-shaped norm's [CLS] input is stored there, detached."""
        layers = [layer for _, layer in self.lntune_layers()]
        sims: list[torch.Tensor] = []
        selection: list[torch.Tensor] = []
        state: dict[str, Any] = {"routing": None}
        names = [self.adapter_name(s) for s in range(upto + 1)]

        def pre_hook(index: int):
            def hook(module: LNTuneLayer, args: tuple[Any, ...]) -> None:
                x = args[0] if args else None
                if not torch.is_tensor(x):
                    return
                key_dim = self.layer_keys[0][index].numel()
                sequence = x.dim() == 3 and x.shape[-1] == key_dim
                if train_task is not None:
                    if sequence and tokens is not None:
                        tokens[index] = x[:, 0].detach().float()
                    elif sequence:
                        key = self.layer_keys[train_task][index]
                        sims.append(F.cosine_similarity(x[:, 0].float(), key.unsqueeze(0), dim=-1).mean())
                    module.set_routing([names[train_task]] * x.shape[0])
                    return
                if sequence:
                    keys = torch.stack([self.layer_keys[s][index] for s in range(upto + 1)])
                    tasks = (F.normalize(x[:, 0].float(), dim=-1) @ F.normalize(keys, dim=-1).T).argmax(dim=-1)
                    selection.append(tasks)
                    state["routing"] = [names[s] for s in tasks.tolist()]
                # a norm without a token sequence reuses the previous choice (the base model before any choice)
                module.set_routing(state["routing"] or [BASE_ADAPTER] * x.shape[0])

            return hook

        def post_hook(module: LNTuneLayer, args: tuple[Any, ...], output: Any) -> None:
            module.set_routing(None)

        handles = []
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i)))
            handles.append(layer.register_forward_hook(post_hook))
        try:
            yield sims
        finally:
            for h in handles:
                h.remove()
            for layer in layers:
                layer.set_routing(None)
            if train_task is None:
                self.last_selection = selection

    def task_features(self, t: int, **inputs: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        t = self.check_task(t)
        with self._selection_hooks(train_task=t, upto=t) as sims:
            features = self.model(**inputs)
        key_loss = -torch.stack(sims).mean() if sims else None
        return features, key_loss

    @torch.no_grad()
    def layer_inputs(self, t: int, **inputs: torch.Tensor) -> dict[int, torch.Tensor]:
        """The [CLS] input of every sequence-shaped norm (by layer index) when the batch runs with task `t`."""
        tokens: dict[int, torch.Tensor] = {}
        with self._selection_hooks(train_task=self.check_task(t), upto=t, tokens=tokens):
            self.model(**inputs)
        return tokens

    def layer_key_loss(self, t: int, tokens: dict[int, torch.Tensor]) -> torch.Tensor:
        """Negative cosine similarity between task `t`'s layer keys and [CLS] inputs, averaged over samples and
        layers (the same quantity `task_features` adds to the cross-entropy)."""
        keys = self.layer_keys[self.check_task(t)]
        sims = [F.cosine_similarity(x, keys[i].unsqueeze(0), dim=-1).mean() for i, x in tokens.items()]
        return -torch.stack(sims).mean()

    def infer(
        self, queries: Optional[torch.Tensor] = None, upto: Optional[int] = None, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, task chosen by the last norm) from one pass; `queries` is ignored (there is no query pass)."""
        if self.num_tasks == 0:
            raise ValueError("The bank has no task yet: add_task() first.")
        self.validate()
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        with self._selection_hooks(train_task=None, upto=upto):
            features = self.model(**inputs)
        return features, self.last_selection[-1]
