# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Make peft know the "lntune" method, and write lntune adapters atomically, without changing peft for other methods.

**The method.** peft's `register_peft_method` only accepts names that are members of its closed `PeftType` enum, and a
third-party package cannot declare a new member. So we add one member, `PeftType.LNTUNE`, the way `enum` itself
builds members (name == value, so `PeftType("LNTUNE")`, `PeftType["LNTUNE"]`, `list(PeftType)` and dict look-ups by the
plain string saved in `adapter_config.json` all work), then call peft's own `register_peft_method`. Everything else
(`get_peft_model`, `PeftConfig.from_pretrained`, `PeftModel.from_pretrained`, `save_pretrained`) is peft's code. The
only entries added to peft's registries are the "LNTUNE" ones; the built-in methods' entries are left as they are.

**Atomic adapter files, for lntune adapters only.** `PeftModel.save_pretrained` writes `adapter_model.safetensors`
with `safetensors.torch.save_file` (imported in `peft.peft_model` as `safe_save_file`) directly on the final path, and
peft has no hook for how the file is written. We want a crash mid-save never to leave half an lntune adapter where the
user saved it, but a LoRA (or any other method's) save in the same process must stay byte- and mode-identical to what
peft alone writes. The least invasive way we found:

- `PeftModel.save_pretrained` is wrapped once (`functools.wraps`, same signature and docs). The wrapper looks at the
  configs of the adapters being saved; unless one is an `LNTuneConfig` it calls peft's original at once, with the
  same arguments, and nothing else happens. The decision comes from the config type, which is what decides the
  method everywhere in peft, not from file names or call stacks.
- For an lntune save, and only for its duration, `peft.peft_model.safe_save_file` is replaced by a dispatcher that
  writes atomically (`atomic_save_file`: temp file in the same folder, then `os.replace`) when the *current context*
  is inside an lntune save (a `ContextVar`), and otherwise delegates to the function it replaced. So another thread
  saving a LoRA adapter at the same moment still gets peft's own writer. When the last lntune save ends, the
  original function is put back: outside lntune saves `peft.peft_model.safe_save_file is safetensors.torch.save_file`.

On peft < 0.21 the wrapper also records the adapted norms' shapes in the config first (see `compat.record_base_norms`),
which newer peft does through its state-dict hook.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import peft.peft_model
from peft import PeftModel
from peft.utils import PeftType, register_peft_method

from ..io import save_safetensors
from .compat import record_base_norms

METHOD_NAME = "lntune"


def _ensure_peft_type_member(name: str) -> PeftType:
    """Return `PeftType[name]`, adding the member to the enum if this peft version does not have it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member.__init__(name)
    # order matters: enum's metaclass forbids setting an attribute that is already a member name
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


def atomic_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, but written to a temp file first and renamed into place (`lntune.io`)."""
    save_safetensors(tensors, filename, metadata=metadata)


# ----------------------------------------------------------------------------- atomic writes during lntune saves
_IN_LNTUNE_SAVE: contextvars.ContextVar[bool] = contextvars.ContextVar("lntune_in_save", default=False)
_swap_lock = threading.Lock()
_swap_depth = 0
_replaced: Callable[..., Any] | None = None  # what `peft.peft_model.safe_save_file` was before the swap


def _dispatching_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """Installed only while an lntune save runs: atomic inside it, peft's own writer for anyone else."""
    if _IN_LNTUNE_SAVE.get():
        atomic_save_file(tensors, filename, metadata=metadata)
    else:
        _replaced(tensors, filename, metadata=metadata)


@contextmanager
def _atomic_adapter_writes() -> Iterator[None]:
    """Within this block (this context only), `PeftModel.save_pretrained` writes its safetensors files atomically."""
    global _swap_depth, _replaced
    token = _IN_LNTUNE_SAVE.set(True)
    with _swap_lock:
        if _swap_depth == 0:
            _replaced = peft.peft_model.safe_save_file
            peft.peft_model.safe_save_file = _dispatching_save_file
        _swap_depth += 1
    try:
        yield
    finally:
        with _swap_lock:
            _swap_depth -= 1
            if _swap_depth == 0:
                if peft.peft_model.safe_save_file is _dispatching_save_file:
                    peft.peft_model.safe_save_file = _replaced
                _replaced = None
        _IN_LNTUNE_SAVE.reset(token)


def _lntune_adapters(model: PeftModel, selected: list[str] | None) -> list[str]:
    """The adapters that `save_pretrained(selected_adapters=selected)` would save and that are lntune adapters."""
    from .config import LNTuneConfig

    configs = getattr(model, "peft_config", None) or {}
    names = list(configs) if selected is None else list(selected)
    return [n for n in names if isinstance(configs.get(n), LNTuneConfig)]


_peft_save_pretrained = PeftModel.save_pretrained
if getattr(_peft_save_pretrained, "_lntune_wrapper", False):  # this module was reloaded: wrap peft's, not ours
    _peft_save_pretrained = _peft_save_pretrained.__wrapped__


@functools.wraps(_peft_save_pretrained)
def _save_pretrained(self: PeftModel, save_directory: str, *args: Any, **kwargs: Any) -> None:
    # `selected_adapters` is peft's second parameter after `save_directory`
    selected = kwargs.get("selected_adapters", args[1] if len(args) > 1 else None)
    names = _lntune_adapters(self, selected)
    if not names:
        return _peft_save_pretrained(self, save_directory, *args, **kwargs)
    record_base_norms(self, names)
    with _atomic_adapter_writes():
        return _peft_save_pretrained(self, save_directory, *args, **kwargs)


_save_pretrained._lntune_wrapper = True  # type: ignore[attr-defined]


PEFT_TYPE = _ensure_peft_type_member(METHOD_NAME.upper())


def register() -> None:
    """Register LNTuneConfig/LNTuneModel with peft, and route lntune saves through atomic writes (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from .config import LNTuneConfig
    from .model import LNTuneModel

    if PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is not LNTuneModel:
        register_peft_method(
            name=METHOD_NAME, config_cls=LNTuneConfig, model_cls=LNTuneModel, prefix=LNTuneModel.prefix
        )
    if not getattr(PeftModel.save_pretrained, "_lntune_wrapper", False):
        PeftModel.save_pretrained = _save_pretrained
