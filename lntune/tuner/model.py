# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The tuner: finds norm layers by type, wraps them, and routes mixed batches."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, _ExcludedModule
from torch import nn

from ..norms import find_norms, is_norm, norm_type_summary
from .config import LNTuneConfig, _normalise_mask
from .layer import BASE_ADAPTER, LNTuneLayer, Routing

_PEFT_PREFIX = "base_model.model."


def _name_matches(patterns: str | list[str], name: str) -> bool:
    """peft's matching rule: a string is a regex (full match); a list matches exact names or dotted suffixes."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _is_checkpointing(model: nn.Module) -> bool:
    """Whether transformers' activation (gradient) checkpointing is on, under either attribute name."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if attr in dir(type(model)):
            return bool(getattr(model, attr))
    return False


def resolve_target_norms(model: nn.Module, config: LNTuneConfig) -> list[str]:
    """Names of the norm layers of `model` that `config` adapts. Raises a ValueError that says what to do if none."""
    norms = find_norms(model)
    if not norms:
        raise ValueError(
            f"{type(model).__name__} has no normalization layer lntune can tune (looked for torch/timm LayerNorm, "
            "GroupNorm, RMSNorm and transformers' *Norm classes with a 1-D weight). LN tuning needs norm layers."
        )
    if config.target_modules is not None:
        wrong = [
            f"{name} ({type(module).__name__})"
            for name, module in model.named_modules()
            if name
            and _name_matches(config.target_modules, name)
            and not name.endswith(".base_layer")
            and not is_norm(module.get_base_layer() if hasattr(module, "get_base_layer") else module)
        ]
        # a name pattern that reaches non-norm modules is a mistake only if it was meant for them: with a list,
        # every listed name must be a norm; with a regex, non-norm matches are simply skipped
        if wrong and not isinstance(config.target_modules, str):
            raise ValueError(
                f"target_modules names modules that are not normalization layers: {wrong[:5]}. lntune only tunes "
                f"norm layers; this model has {norm_type_summary(model)}, e.g. {[n.name for n in norms[:3]]}."
            )
    selected_roles = config.selected_roles
    chosen = []
    for info in norms:
        if selected_roles is not None and info.role not in selected_roles:
            continue
        if config.target_modules is not None and not _name_matches(config.target_modules, info.name):
            continue
        if config.exclude_modules is not None and _name_matches(config.exclude_modules, info.name):
            continue
        chosen.append(info.name)
    if not chosen:
        found = ", ".join(f"{n.name} [{n.type_name}, role={n.role}]" for n in norms[:6])
        raise ValueError(
            "LNTuneConfig matched no normalization layer "
            f"(target_modules={config.target_modules!r}, exclude_modules={config.exclude_modules!r}, "
            f"roles={selected_roles!r}). The model has {norm_type_summary(model)}: {found}"
            f"{' ...' if len(norms) > 6 else ''}. Widen or drop the filters."
        )
    return chosen


def check_base_norms(model: nn.Module, config: LNTuneConfig, targets: list[str]) -> None:
    """Fail with the first mismatch if the adapter recorded a base model whose adapted norms differ from `model`'s."""
    if not config.base_norms:
        return
    made_for = f" ({config.base_model_name_or_path})" if config.base_model_name_or_path else ""
    shapes = {info.name: info.shapes for info in find_norms(model)}
    for name, saved in config.base_norms.items():
        if name not in shapes:
            raise ValueError(
                f"This adapter was trained on a base model with a norm layer '{name}', which this model does not have "
                f"(it has {norm_type_summary(model)}). Load it onto the base model it was made for{made_for}."
            )
        for pname, shape in saved.items():
            if shapes[name].get(pname) != list(shape):
                raise ValueError(
                    f"Base model mismatch at '{name}.{pname}': the adapter was saved for shape {list(shape)}, this "
                    f"model has {shapes[name].get(pname)}. Load it onto the base model it was made for{made_for}."
                )


def check_mask(model: nn.Module, config: LNTuneConfig, targets: list[str]) -> None:
    """A mask must name adapted norms and stay inside their parameters."""
    if config.mask is None:
        return
    shapes = {info.name: info.shapes for info in find_norms(model)}
    for name, per_param in config.mask.items():
        if name not in shapes:
            raise ValueError(
                f"mask names '{name}', which is not a normalization layer of this model; the mask was made for a "
                f"different model (this one has {norm_type_summary(model)})."
            )
        if name not in targets:
            raise ValueError(f"mask selects scalars of '{name}', but target_modules/roles exclude that norm.")
        for pname, idx in per_param.items():
            size = shapes[name].get(pname, [0])[0]
            if idx and idx[-1] >= size:
                raise ValueError(
                    f"mask['{name}']['{pname}'] holds index {idx[-1]}, but that parameter has {size} entries: the mask "
                    "does not match this model's shapes."
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
        check_base_norms(model, peft_config, targets)
        check_mask(model, peft_config, targets)
        self._lntune_targets = set(targets)
        excluded = peft_config.exclude_modules
        self._lntune_excluded = {n.name for n in find_norms(model) if excluded and _name_matches(excluded, n.name)}

    def _check_target_module_exists(self, peft_config: LNTuneConfig, key: str) -> bool | _ExcludedModule:
        if key in getattr(self, "_lntune_excluded", ()):
            return _ExcludedModule()  # tells peft the exclusion was used (else it warns that nothing was excluded)
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
        layers = [m for m in self.model.modules() if isinstance(m, LNTuneLayer)]  # one walk per routed forward
        available = {name for layer in layers for name in (*layer.lntune_weight.keys(), *layer.lntune_bias.keys())}
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
        if self.training and _is_checkpointing(self.model):
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
        routing = Routing.from_names(list(adapter_names))
        for layer in layers:
            layer.routing = routing
        try:
            yield
        finally:
            for layer in layers:
                layer.routing = None

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
                base_norms[name.removeprefix(_PEFT_PREFIX)] = {
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
        """
        adapter_name = adapter_name or self.active_adapters[0]
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}; adapters: {sorted(self.peft_config)}.")
        mask = _normalise_mask(mask)
        layers = {name: layer for name, layer in self.lntune_layers() if layer.has_adapter(adapter_name)}
        check_mask(self.model, self.peft_config[adapter_name], list(layers))
        swapped: dict[nn.Parameter, Optional[nn.Parameter]] = {}
        for name, layer in layers.items():
            swapped.update(layer.apply_mask(adapter_name, mask.get(name)))
        self.peft_config[adapter_name].mask = mask
        return swapped

    def lntune_layers(self) -> list[tuple[str, LNTuneLayer]]:
        """(name, layer) of every wrapped norm."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LNTuneLayer)]

    def delta_norms(self, adapter_name: Optional[str] = None) -> dict[str, float]:
        """L2 norm of each wrapped norm's delta (gain and bias together) for `adapter_name` (default: active)."""
        adapter_name = adapter_name or self.active_adapters[0]
        out = {}
        for name, layer in self.lntune_layers():
            parts = [d for d in (layer.dense_delta(p, adapter_name) for p in ("weight", "bias")) if d is not None]
            if parts:
                out[name] = float(torch.cat([p.detach().float() for p in parts]).norm())
        return out
