# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Which norms an `LNTuneConfig` adapts on a model, and the checks that refuse a config, mask or saved adapter that
does not fit the model (each error names what was wrong and what to do)."""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

from ..norms import find_norms, is_norm, norm_type_summary
from .config import LNTuneConfig, normalise_mask

PEFT_PREFIX = "base_model.model."


def name_matches(patterns: str | list[str], name: str) -> bool:
    """peft's matching rule: a string is a regex (full match); a list matches exact names or dotted suffixes."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


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
            and name_matches(config.target_modules, name)
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
        if config.target_modules is not None and not name_matches(config.target_modules, info.name):
            continue
        if config.exclude_modules is not None and name_matches(config.exclude_modules, info.name):
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
        if key not in norms and key.startswith(PEFT_PREFIX) and key.removeprefix(PEFT_PREFIX) in norms:
            key = key.removeprefix(PEFT_PREFIX)  # a name as PeftModel.named_modules() spells it
        if key not in norms:
            close = [n for n in norms if n.endswith(key.rsplit(".", 1)[-1])][:3]
            raise ValueError(
                f"mask names '{name}', which is not a normalization layer of this model; the mask was made for a "
                f"different model or the name is misspelt (this one has {norm_type_summary(model)}, e.g. {close or list(norms)[:3]})."
            )
        if key in fixed:
            raise ValueError(f"mask names the norm '{key}' twice (with and without the '{PEFT_PREFIX}' prefix).")
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
