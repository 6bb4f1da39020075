# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Small shims so the tuner runs on every peft in the supported range (see `lntune.MIN_PEFT_VERSION`).

`layer.py` and `model.py` import peft's base classes from here instead of from `peft.tuners.tuners_utils`. On the
newest peft (>= 0.21, the stack CI runs first) every name below *is* peft's own object: nothing changes. On older
peft minors two gaps are filled, each on our subclasses only (peft's classes and other methods are never touched):

- `BaseTunerLayer._move_adapter_to_device_of_base_layer` casts every entry of `other_param_names` to the base layer's
  float dtype before peft 0.21, which turns the integer index buffers of masked adapters into floats (and, on a bf16
  base, rounds indices above 256). Our subclass keeps integer tensors' dtype and only moves them to the device.
- peft 0.21 added the `BaseTuner._get_adapter_state_dict` hook, through which `LNTuneModel` records the shapes of the
  norms it adapts (`LNTuneConfig.base_norms`) at save time. Older peft never calls it, so the subclass provides a
  no-op base for `super()` and `registration.py` calls the hook itself when an lntune adapter is saved
  (`record_base_norms`), so that loading onto the wrong base model still fails with lntune's clear message.
"""

from __future__ import annotations

from typing import Any

import peft
import torch
from packaging.version import Version
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner as _PeftBaseTuner
from peft.tuners.tuners_utils import BaseTunerLayer as _PeftBaseTunerLayer
from peft.tuners.tuners_utils import _ExcludedModule as ExcludedModule  # peft's marker: "excluded on purpose"
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

__all__ = [
    "PEFT_HAS_STATE_DICT_HOOKS",
    "PEFT_VERSION",
    "BaseTuner",
    "BaseTunerLayer",
    "ExcludedModule",
    "check_adapters_to_merge",
    "record_base_norms",
]

PEFT_VERSION = Version(peft.__version__)
# peft >= 0.21 dispatches state-dict selection to the tuner class and keeps integer buffers' dtype
PEFT_HAS_STATE_DICT_HOOKS: bool = hasattr(_PeftBaseTuner, "_get_adapter_state_dict")


def _is_integer(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not (t.dtype.is_floating_point or t.dtype.is_complex)


if PEFT_HAS_STATE_DICT_HOOKS:
    BaseTuner = _PeftBaseTuner
    BaseTunerLayer = _PeftBaseTunerLayer
else:

    class BaseTunerLayer(_PeftBaseTunerLayer):
        """peft's `BaseTunerLayer`, except that moving an adapter never casts its integer buffers to a float dtype."""

        def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
            kept: dict[str, torch.Tensor] = {}
            for name in (*self.adapter_layer_names, *self.other_param_names):
                store = getattr(self, name, None)
                if isinstance(store, (nn.ParameterDict, BufferDict)) and adapter_name in store:
                    if _is_integer(store[adapter_name]):
                        kept[name] = store[adapter_name]
            super()._move_adapter_to_device_of_base_layer(adapter_name, device)
            for name, tensor in kept.items():
                store = getattr(self, name)
                store[adapter_name] = tensor.to(store[adapter_name].device)

    class BaseTuner(_PeftBaseTuner):
        """peft's `BaseTuner` plus the peft 0.21 state-dict hook, as a no-op base for subclasses' `super()` calls."""

        @classmethod
        def _get_adapter_state_dict(
            cls,
            model: nn.Module,
            config: Any,
            adapter_name: str,
            state_dict: dict[str, torch.Tensor],
            unwanted_adapter_names: list[str],
        ) -> dict[str, torch.Tensor]:
            return dict(state_dict)


def record_base_norms(peft_model: nn.Module, adapter_names: list[str]) -> None:
    """On peft < 0.21, run the tuner's `_get_adapter_state_dict` hook (which peft would not call) for its side effect
    of recording `base_norms` in each adapter's config, just before `PeftModel.save_pretrained` writes the config."""
    if PEFT_HAS_STATE_DICT_HOOKS:
        return  # peft calls the hook itself while building the state dict
    tuner_cls = type(peft_model.base_model)
    for name in adapter_names:
        tuner_cls._get_adapter_state_dict(peft_model, peft_model.peft_config[name], name, {}, [])
