# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The lntune peft method: re-exports, and the registration with peft."""

from .config import PRESETS, LNTuneConfig
from .layer import LNTuneLayer
from .model import LNTuneModel
from .registration import PEFT_TYPE, register
from .routing import BASE_ADAPTER

__all__ = ["BASE_ADAPTER", "PEFT_TYPE", "PRESETS", "LNTuneConfig", "LNTuneLayer", "LNTuneModel"]

register()
