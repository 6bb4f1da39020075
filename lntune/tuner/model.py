# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The tuner: finds norm layers by type, wraps them, and routes mixed batches."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..norms import find_norms, is_norm, norm_type_summary
from .compat import BaseTuner, ExcludedModule
from .config import LNTuneConfig, normalise_mask
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


def adapted_norms(model: nn.Module, config: LNTuneConfig, targets: list[str]) -> dict[str, list[str]]:
    """{norm name: parameters that get a delta} for the `targets` of `config` on `model` (norms with nothing to tune,
    e.g. RMSNorms under `params="bias"` or norms outside a mask, are left out)."""
    shapes = {info.name: info.shapes for info in find_norms(model)}
    out = {}
    for name in targets:
        pnames = [p for p in config.tuned_params if p in shapes.get(name, {})]
        if config.mask is not None:
            pnames = [p for p in pnames if (config.mask.get(name) or {}).get(p)]
        if pnames:
            out[name] = pnames
    return out


def check_base_norms(model: nn.Module, config: LNTuneConfig, targets: list[str]) -> None:
    """Fail with the first difference if the adapter recorded a base model whose adapted norms differ from `model`'s:
    a recorded norm this model lacks (or has in another shape), or a norm of this model the adapter would adapt but
    did not record (e.g. a 2-layer adapter loaded onto a 3-layer model of the same family)."""
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
    adapted = adapted_norms(model, config, targets)
    skipped = [name for name in config.base_norms if name not in adapted]
    if skipped:
        raise ValueError(
            f"This adapter holds deltas for the norm layer '{skipped[0]}', which this model has but the adapter's "
            f"config would not adapt here (its role or parameters differ from the base model the adapter was saved "
            f"for). Load it onto the base model it was made for{made_for}."
        )
    extra = [name for name in adapted if name not in config.base_norms]
    if extra:
        raise ValueError(
            f"This model has a norm layer '{extra[0]}' (and {len(extra) - 1} more) that this adapter's config would "
            f"adapt, but the base model the adapter was saved for had no such norm ({len(config.base_norms)} adapted "
            f"norms were recorded): it would keep untrained deltas. Load the adapter onto the base model it was made "
            f"for{made_for}."
        )


def check_mask(
    model: nn.Module, config: LNTuneConfig, targets: list[str], mask: Optional[dict] = None
) -> Optional[dict[str, dict[str, list[int]]]]:
    """Validate `mask` (default: `config.mask`) against `model`: it must name adapted norms, select only parameters
    they have and `config.params` tunes, and stay inside them. Returns the mask with names given relative to a
    PeftModel (`base_model.model.<name>`) turned into `model`'s own names, where that is unambiguous."""
    mask = config.mask if mask is None else normalise_mask(mask)
    if mask is None:
        return None
    norms = {info.name: info for info in find_norms(model)}
    fixed: dict[str, dict[str, list[int]]] = {}
    for name, per_param in mask.items():
        key = name
        if key not in norms and key.startswith(_PEFT_PREFIX) and key.removeprefix(_PEFT_PREFIX) in norms:
            key = key.removeprefix(_PEFT_PREFIX)  # a name as PeftModel.named_modules() spells it
        if key not in norms:
            close = [n for n in norms if n.endswith(key.rsplit(".", 1)[-1])][:3]
            raise ValueError(
                f"mask names '{name}', which is not a normalization layer of this model; the mask was made for a "
                f"different model or the name is misspelt (this one has {norm_type_summary(model)}, e.g. {close or list(norms)[:3]})."
            )
        if key in fixed:
            raise ValueError(f"mask names the norm '{key}' twice (with and without the '{_PEFT_PREFIX}' prefix).")
        if key not in targets:
            raise ValueError(f"mask selects scalars of '{key}', but target_modules/roles exclude that norm.")
        shapes = norms[key].shapes
        for pname, idx in per_param.items():
            if not idx:
                continue
            if pname not in shapes:
                raise ValueError(
                    f"mask['{name}'] selects {pname} entries, but '{key}' ({norms[key].type_name}) has no {pname}."
                )
            if pname not in config.tuned_params:
                raise ValueError(
                    f"mask['{name}'] selects {pname} entries, but this adapter tunes only params={config.params!r}."
                )
            size = shapes[pname][0]
            if idx[-1] >= size:
                raise ValueError(
                    f"mask['{name}']['{pname}'] holds index {idx[-1]}, but that parameter has {size} entries: the mask "
                    "does not match this model's shapes."
                )
        fixed[key] = per_param
    return fixed


def check_something_to_train(model: nn.Module, config: LNTuneConfig, targets: list[str]) -> None:
    """An adapter whose config gives no norm a delta would train nothing: say why instead of creating it."""
    if adapted_norms(model, config, targets):
        return
    if config.mask is not None:
        raise ValueError(
            "This LNTuneConfig adapts no scalar: every index list of its mask is empty for the parameters it tunes "
            f"(params={config.params!r}). Select at least one index, or drop the mask."
        )
    infos = [info for info in find_norms(model) if info.name in set(targets)]
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.type_name] = counts.get(info.type_name, 0) + 1
    summary = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    raise ValueError(
        f"This LNTuneConfig adapts no parameter: params={config.params!r}, but the matched norms ({summary}) have no "
        f"{' or '.join(config.tuned_params)}. Use params='both' or 'weight', or target norms that have a bias."
    )


def _generation_expand_size(kwargs: dict) -> int:
    """How many times `generate` repeats each input row (beam search, `num_return_sequences`), from its kwargs."""
    config = kwargs.get("generation_config")
    sizes = [kwargs.get(k, getattr(config, k, None)) for k in ("num_beams", "num_return_sequences")]
    return max([1, *(int(s) for s in sizes if isinstance(s, int))])


def _routed_head_forward(head: ModulesToSaveWrapper, routing: Routing):
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
        self._lntune_excluded = {n.name for n in find_norms(model) if excluded and _name_matches(excluded, n.name)}

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
        routing = Routing.from_names(list(adapter_names), expand=_generation_expand_size(kwargs))
        for layer in layers:
            layer.routing = routing
        # modules_to_save copies (e.g. a classifier head) are routed too: row i goes through adapter_names[i]'s copy,
        # or through the original module for "__base__" and for adapters without a copy (as when run alone). peft's
        # wrapper only routes Linear/Embedding/Conv modules, so we put a routed forward on each wrapper instead.
        patched = [(head, head.__dict__.get("forward")) for head in heads]
        for head in heads:
            head.forward = _routed_head_forward(head, routing)
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
