# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Make peft know the "lntune" method.

peft 0.21's `register_peft_method` only accepts names that are members of its closed `PeftType` enum, and a
third-party package cannot declare a new member. So we add one member, `PeftType.LNTUNE`, the way `enum` itself
builds members (name == value, so `PeftType("LNTUNE")`, `PeftType["LNTUNE"]`, `list(PeftType)` and dict look-ups by the
plain string saved in `adapter_config.json` all work), then call peft's own `register_peft_method`. Everything else
(`get_peft_model`, `PeftConfig.from_pretrained`, `PeftModel.from_pretrained`, `save_pretrained`) is peft's code.

The second thing peft gives no hook for is how the adapter file is written: `PeftModel.save_pretrained` calls
`safetensors.torch.save_file` directly on the final path. We swap that one module-level name in `peft.peft_model` for
`atomic_save_file`, which writes to a temp file in the same folder and renames it, so a crash never leaves a
half-written adapter where the user saved it. It behaves identically for every peft method.
"""

from __future__ import annotations

import os
import tempfile

import peft.peft_model
from peft.utils import PeftType, register_peft_method
from safetensors.torch import save_file

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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, but written to a temp file first and renamed into place."""
    directory = os.path.dirname(os.path.abspath(filename))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; a plain save would honour the umask
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


PEFT_TYPE = _ensure_peft_type_member(METHOD_NAME.upper())


def register() -> None:
    """Register LNTuneConfig/LNTuneModel with peft (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from .config import LNTuneConfig
    from .model import LNTuneModel

    if PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is LNTuneModel:
        return
    register_peft_method(name=METHOD_NAME, config_cls=LNTuneConfig, model_cls=LNTuneModel, prefix=LNTuneModel.prefix)
    peft.peft_model.safe_save_file = atomic_save_file
