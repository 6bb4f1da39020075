# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the lntune PEFT method."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from ..io import atomic_files
from ..norms import ROLES

PARAMS_CHOICES = ("both", "weight", "bias")
# Named groups of norms that the LayerNorm-tuning papers compare; each is a list of roles (see lntune.norms.ROLES).
PRESETS: dict[str, list[str]] = {
    "all": list(ROLES),
    "output": ["output"],  # the LN of the feed-forward sub-layer (BERT's `output.LayerNorm`): the paper's winner
    "attention": ["attention"],  # the LN of the attention sub-layer (BERT's `attention.output.LayerNorm`)
    "blocks": ["attention", "output"],  # every norm inside the transformer blocks, none outside
}


@dataclass
class LNTuneConfig(PeftConfig):
    """
    Configuration of [`LNTuneModel`]: train only the gains and biases of a model's normalization layers.

    Norm layers are found by type (torch/timm LayerNorm, GroupNorm, RMSNorm, transformers' `*RMSNorm`, T5's LayerNorm,
    Gemma's `1 + weight` RMSNorm, ...), so `target_modules` is optional and only narrows the choice. The adapter stores
    per-adapter *deltas* added to the base gain/bias; the base norm module is never copied.

    Args:
        target_modules (`Optional[Union[list[str], str]]`):
            Narrow the norms to adapt: a list of module names (exact or suffix match) or a regex (full match).
            `None` (default) adapts every norm layer found.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Norms not to adapt, with the same matching rules as `target_modules`.
        roles (`Optional[list[str]]`):
            Adapt only norms with these roles (`"embedding"`, `"attention"`, `"output"`, `"final"`, `"qk"`,
            `"other"`); see `lntune.norms.norm_role`.
        preset (`Optional[str]`):
            A named group of roles: `"all"`, `"output"` (feed-forward LN only), `"attention"`, `"blocks"`.
            Mutually exclusive with `roles`.
        params (`str`):
            Which affine parameters to train: `"both"` (default), `"weight"` (gains only) or `"bias"` (biases only).
        init_weights (`bool`):
            `True` (default) starts from the base model (zero deltas); `False` draws small random deltas, useful for
            tests that must see the adapter change the output.
        mask (`Optional[dict[str, dict[str, list[int]]]]`):
            Train only these scalars: norm module name -> `{"weight": [indices], "bias": [indices]}` (what
            `lntune.select_by_fisher` returns). The saved adapter then holds only the selected values.
        modules_to_save (`Optional[list[str]]`):
            Extra modules to train and save in full, e.g. a freshly initialised classifier head.
        base_norms (`Optional[dict[str, dict[str, list[int]]]]`):
            Filled in on save: names and shapes of the adapted norms of the base model, checked when the adapter is
            loaded so that loading onto a different base model fails with a clear error.

    Example:

        ```py
        >>> import lntune
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base, lntune.LNTuneConfig(task_type="SEQ_CLS"))
        >>> model.print_trainable_parameters()
        ```
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Narrow the norms to adapt: module names (exact or suffix match) or a regex (full match)."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Norms not to adapt: module names (exact or suffix match) or a regex."}
    )
    roles: Optional[list[str]] = field(
        default=None,
        metadata={"help": f"Adapt only norms with these roles, a subset of {list(ROLES)}."},
    )
    preset: Optional[str] = field(
        default=None, metadata={"help": f"A named group of roles: one of {sorted(PRESETS)}. Excludes `roles`."}
    )
    params: Literal["both", "weight", "bias"] = field(
        default="both", metadata={"help": "Which affine parameters to train: 'both', 'weight' (gains) or 'bias'."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True starts from the base model (zero deltas); False draws small random deltas."},
    )
    mask: Optional[dict[str, dict[str, list[int]]]] = field(
        default=None,
        metadata={"help": "Train only these scalars: norm name -> {'weight': [indices], 'bias': [indices]}."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save in full, e.g. a new classifier head."}
    )
    base_norms: Optional[dict[str, dict[str, list[int]]]] = field(
        default=None,
        metadata={"help": "Filled in on save: names and shapes of the adapted base norms, checked on load."},
    )

    def __post_init__(self):
        super().__post_init__()
        from .registration import PEFT_TYPE

        self.peft_type = PEFT_TYPE
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple, set)):
            self.exclude_modules = sorted(self.exclude_modules)
        if self.params not in PARAMS_CHOICES:
            raise ValueError(f"LNTuneConfig.params must be one of {PARAMS_CHOICES}, got {self.params!r}.")
        if self.preset is not None:
            if self.roles is not None:
                raise ValueError(f"Pass either `preset` or `roles`, not both (got preset={self.preset!r}).")
            if self.preset not in PRESETS:
                raise ValueError(f"Unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        if self.roles is not None:
            self.roles = list(self.roles)
            unknown = sorted(set(self.roles) - set(ROLES))
            if unknown or not self.roles:
                raise ValueError(f"LNTuneConfig.roles must be a non-empty subset of {list(ROLES)}, got {self.roles}.")
        if self.mask is not None:
            self.mask = normalise_mask(self.mask)

    @property
    def selected_roles(self) -> Optional[list[str]]:
        """The roles to adapt (from `roles` or `preset`), or None for every role."""
        if self.preset is not None:
            return PRESETS[self.preset]
        return self.roles

    @property
    def tuned_params(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.params == "both" else (self.params,)

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write `adapter_config.json` atomically (temp file, then rename), so a crash never leaves half a file."""
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        # let peft build the JSON exactly as for its own configs, into a scratch folder, then move it into place
        with atomic_files(save_directory) as tmp:
            super().save_pretrained(str(tmp), **kwargs)


def normalise_mask(mask: dict) -> dict[str, dict[str, list[int]]]:
    """Validate a mask's structure and turn index containers into sorted lists of ints (JSON-ready)."""
    if not isinstance(mask, dict) or not mask:
        raise ValueError("LNTuneConfig.mask must be a non-empty dict: norm name -> {'weight': [...], 'bias': [...]}.")
    out: dict[str, dict[str, list[int]]] = {}
    for name, per_param in mask.items():
        if not isinstance(per_param, dict) or set(per_param) - {"weight", "bias"}:
            raise ValueError(f"mask[{name!r}] must be a dict with keys 'weight' and/or 'bias', got {per_param!r}.")
        out[name] = {}
        for pname, idx in per_param.items():
            values = idx.tolist() if hasattr(idx, "tolist") else list(idx)
            values = sorted({int(i) for i in values})
            if values and values[0] < 0:
                raise ValueError(f"mask[{name!r}][{pname!r}] holds a negative index ({values[0]}).")
            out[name][pname] = values
    return out
