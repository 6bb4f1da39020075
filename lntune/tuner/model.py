# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The tuner: finds norm layers by type, wraps them, and routes mixed batches."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..norms import find_norms
from .compat import BaseTuner, ExcludedModule
from .config import LNTuneConfig
from .layer import LNTuneLayer
from .routing import BASE_ADAPTER, Routing, generation_expand_size, is_checkpointing, routed_head_forward
from .targets import (
    PEFT_PREFIX,
    adapted_norms,
    check_base_norms,
    check_mask,
    check_something_to_train,
    name_matches,
    resolve_target_norms,
)


class LNTuneModel(BaseTuner):
    """
    LayerNorm tuning as a peft tuner: every normalization layer (found by type) is wrapped in an [`LNTuneLayer`]
    whose per-adapter deltas are the only trainable parameters (plus `modules_to_save`).

    Papers: ValizadehAslani & Liang 2024, "LayerNorm: A key component in parameter-efficient fine-tuning"; De Min et
    al. 2023, "On the Effectiveness of LayerNorm Tuning for Continual Learning in Vision Transformers".

    Example:

        ```py
        >>> import lntune
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base, lntune.LNTuneConfig(task_type="SEQ_CLS"))
        >>> model.print_trainable_parameters()
        ```

    **Attributes**:
        - **model** ([`~transformers.PreTrainedModel`]) -- The model being adapted.
        - **peft_config** (`dict[str, LNTuneConfig]`) -- The configuration of each adapter.
    """

    prefix: str = "lntune_"
    tuner_layer_cls = LNTuneLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: LNTuneConfig, model_config: dict) -> LNTuneConfig:
        return peft_config  # norms are found by type: no per-architecture name table needed

    def _prepare_model(self, peft_config: LNTuneConfig, model: nn.Module) -> None:
        targets = resolve_target_norms(model, peft_config)
        peft_config.mask = check_mask(model, peft_config, targets)
        check_base_norms(model, peft_config, targets)
        check_something_to_train(model, peft_config, targets)
        self._lntune_targets = set(adapted_norms(model, peft_config, targets))  # no wrapper where nothing is tuned
        excluded = peft_config.exclude_modules
        self._lntune_excluded = {n.name for n in find_norms(model) if excluded and name_matches(excluded, n.name)}

    def _check_target_module_exists(self, peft_config: LNTuneConfig, key: str) -> bool | ExcludedModule:
        if key in getattr(self, "_lntune_excluded", ()):
            return ExcludedModule()  # tells peft the exclusion was used (else it warns that nothing was excluded)
        return key in getattr(self, "_lntune_targets", ())

    def _create_and_replace(
        self,
        peft_config: LNTuneConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, LNTuneLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = LNTuneLayer(target, adapter_name, peft_config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # LNTuneLayer already creates its deltas on the norm's device, and unloading puts back the very module that
        # was wrapped, so there is nothing to re-wire (BaseTuner's version assumes Linear-like modules and breaks on
        # modules_to_save heads such as RobertaClassificationHead, which have no `.weight`).
        setattr(parent, child_name, new_module)

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's `delete_adapter`, but the next active adapter is chosen from the adapters, not from the first layer
        (with masks, a layer can lack the remaining adapters, and peft would then leave no adapter active)."""
        was_active = list(self.active_adapters)
        super().delete_adapter(adapter_name)
        if self.peft_config and not self.active_adapters:
            remaining = [a for a in was_active if a != adapter_name] or [next(iter(self.peft_config))]
            self.set_adapter(remaining if len(remaining) > 1 else remaining[0])

    # ------------------------------------------------------------------ mixed batches
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """With `adapter_names=[...]`, row i of the batch runs with adapter `adapter_names[i]` ("__base__": none)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError("adapter_names must be a list of adapter names (str), one per sample of the batch.")
        layers, heads = [], []  # one walk per routed forward
        for module in self.model.modules():
            if isinstance(module, LNTuneLayer):
                layers.append(module)
            elif isinstance(module, ModulesToSaveWrapper):
                heads.append(module)
        available = {name for layer in layers for name in (*layer.lntune_weight.keys(), *layer.lntune_bias.keys())}
        available |= {name for head in heads for name in head.modules_to_save.keys()}
        unknown = sorted(set(adapter_names) - available - {BASE_ADAPTER})
        if unknown:
            raise ValueError(
                f"Unknown adapter name(s) {unknown} in adapter_names; available: "
                f"{sorted(available)} (or '{BASE_ADAPTER}' for the base model)."
            )
        for key in ("input_ids", "pixel_values", "inputs_embeds"):
            value = kwargs.get(key, args[0] if args and key == "input_ids" else None)
            if isinstance(value, torch.Tensor) and value.shape[0] != len(adapter_names):
                raise ValueError(
                    f"adapter_names has {len(adapter_names)} entries but {key} has batch size {value.shape[0]}: "
                    "pass exactly one adapter name per sample."
                )
        if self.training and is_checkpointing(self.model):
            raise ValueError(
                "adapter_names cannot be combined with gradient checkpointing in training: the recomputed forward "
                "would not see the routing. Disable gradient checkpointing for mixed-batch training."
            )
        merged = [m.module_name for m in layers if m.merged]
        if merged:
            raise ValueError(
                f"Cannot route a mixed batch while adapters are merged (e.g. in {merged[0]}): call "
                "model.unmerge_adapter() first."
            )
        routing = Routing.from_names(list(adapter_names), expand=generation_expand_size(kwargs))
        for layer in layers:
            layer.routing = routing
        # modules_to_save copies (e.g. a classifier head) are routed too: row i goes through adapter_names[i]'s copy,
        # or through the original module for "__base__" and for adapters without a copy (as when run alone). peft's
        # wrapper only routes Linear/Embedding/Conv modules, so we put a routed forward on each wrapper instead.
        patched = [(head, head.__dict__.get("forward")) for head in heads]
        for head in heads:
            head.forward = routed_head_forward(head, routing)
        try:
            yield
        finally:
            for layer in layers:
                layer.routing = None
            for head, previous in patched:
                if previous is None:
                    del head.forward
                else:
                    head.forward = previous

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Deltas are fp32 by default, also on a bf16/fp16 base (tiny LN updates vanish in bf16).

        `autocast_adapter_dtype=False` (on `get_peft_model`, `add_adapter`, `PeftModel.from_pretrained`,
        `load_adapter`) keeps them in the dtype of the base norm's own parameters instead, as peft's other methods do.
        """
        if autocast_adapter_dtype:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=True)
            return
        for layer in self.model.modules():
            if not isinstance(layer, LNTuneLayer):
                continue
            base = layer.get_base_layer()
            for pname, store in (("weight", layer.lntune_weight), ("bias", layer.lntune_bias)):
                if adapter_name not in store:
                    continue
                dtype = getattr(base, pname).dtype
                if store[adapter_name].dtype != dtype and dtype.is_floating_point:
                    old = store[adapter_name]
                    store[adapter_name] = nn.Parameter(old.detach().to(dtype), requires_grad=old.requires_grad)

    # ------------------------------------------------------------------ saving
    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: LNTuneConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        # record which norms (and shapes) of the base model this adapter touches, so loading onto a different base
        # model fails with a clear message instead of silently skipping keys
        base_norms = {}
        for name, module in model.named_modules():
            if isinstance(module, LNTuneLayer) and module.has_adapter(adapter_name):
                base = module.get_base_layer()
                base_norms[name.removeprefix(PEFT_PREFIX)] = {
                    p: list(getattr(base, p).shape)
                    for p in ("weight", "bias")
                    if isinstance(getattr(base, p, None), nn.Parameter)
                }
        config.base_norms = base_norms
        return super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)

    def set_mask(self, mask: dict, adapter_name: Optional[str] = None) -> dict[nn.Parameter, Optional[nn.Parameter]]:
        """Restrict an existing adapter to the scalars in `mask` (e.g. from `lntune.select_by_fisher`).

        Selected deltas keep their current values; everything else is dropped from the adapter (and from its saved
        file). The mask is recorded in the adapter's config. Returns {old parameter: new parameter or None} so that an
        optimizer created before the call can be updated (see `lntune.fisher.swap_optimizer_params`).

        The new mask gets the checks of `LNTuneConfig(mask=...)`: every name must be a norm carrying this adapter,
        every index inside its parameter, and at least one scalar selected; a bad mask raises and leaves the adapter
        as it was. Names as `PeftModel.named_modules()` spells them (`base_model.model.<name>`) are accepted and
        stored without the prefix, unless the base model itself has a norm under the prefixed name.
        """
        adapter_name = adapter_name or self.active_adapters[0]
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}; adapters: {sorted(self.peft_config)}.")
        config = self.peft_config[adapter_name]
        layers = {name: layer for name, layer in self.lntune_layers() if layer.has_adapter(adapter_name)}
        # the same checks as LNTuneConfig(mask=...), on the new mask; PeftModel-style names are accepted
        mask = check_mask(self.model, config, list(layers), mask=mask)
        if not any(idx for per_param in mask.values() for idx in per_param.values()):
            raise ValueError(
                f"The mask selects no scalar: adapter {adapter_name!r} would have nothing left to train. Select at "
                "least one index (or delete the adapter with delete_adapter)."
            )
        for name, per_param in mask.items():
            missing = [p for p, idx in per_param.items() if idx and layers[name].dense_delta(p, adapter_name) is None]
            if missing:
                raise ValueError(
                    f"mask['{name}'] selects {missing[0]} entries, but adapter {adapter_name!r} has no {missing[0]} "
                    "delta there (a mask can only narrow an adapter, not add parameters to it)."
                )
        swapped: dict[nn.Parameter, Optional[nn.Parameter]] = {}
        for name, layer in layers.items():
            swapped.update(layer.apply_mask(adapter_name, mask.get(name)))
        config.mask = mask
        return swapped

    def lntune_layers(self) -> list[tuple[str, LNTuneLayer]]:
        """(name, layer) of every wrapped norm."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LNTuneLayer)]

    def adapter_params(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """The trainable tensors of `adapter_name`, keyed `"<norm name>.weight"` / `"<norm name>.bias"` (base-model
        names): what an optimizer, a checkpoint or a copy between adapters needs, without reaching into the layers."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}; adapters: {sorted(self.peft_config)}.")
        return {
            f"{name}.{pname}": param
            for name, layer in self.lntune_layers()
            for pname, param in layer.adapter_params(adapter_name).items()
        }

    @torch.no_grad()
    def copy_adapter_values(self, source: str, target: str) -> None:
        """Set every delta of adapter `target` to adapter `source`'s values (e.g. start a new task from the last one).

        Both adapters must hold the same tensors (same norms, same masks); otherwise this raises naming the first
        difference, and nothing is copied.
        """
        src, dst = self.adapter_params(source), self.adapter_params(target)
        if src.keys() != dst.keys():
            diff = sorted(src.keys() ^ dst.keys())[0]
            raise ValueError(f"Adapters {source!r} and {target!r} hold different tensors (e.g. {diff}): cannot copy.")
        for key, value in src.items():
            if value.shape != dst[key].shape:
                raise ValueError(
                    f"{key}: adapter {source!r} has shape {list(value.shape)}, {target!r} {list(dst[key].shape)}."
                )
        for key, value in src.items():
            dst[key].copy_(value)

    def delta_norms(self, adapter_name: Optional[str] = None) -> dict[str, float]:
        """L2 norm of each wrapped norm's delta (gain and bias together) for `adapter_name` (default: active)."""
        adapter_name = adapter_name or self.active_adapters[0]
        out = {}
        for name, layer in self.lntune_layers():
            parts = [d for d in (layer.dense_delta(p, adapter_name) for p in ("weight", "bias")) if d is not None]
            if parts:
                out[name] = float(torch.cat([p.detach().float() for p in parts]).norm())
        return out
