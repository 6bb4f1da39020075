# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Atomic checkpoints of LN banks and of a run's progress.

A checkpoint is a folder with ``tensors.safetensors`` (the bank's adapters, keys and heads: never the frozen
backbone) and ``meta.json`` (the bank's manifest plus any JSON state, e.g. the predictions made so far). It is written
into a temporary sibling folder and renamed into place, so a run killed while saving leaves either the previous
checkpoint or the new one, never half of one. :func:`latest_checkpoint` finds where to resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_directory
from ..tuner import LNTuneConfig
from .bank import LNBank
from .late_select import LateSelectionLNBank
from .single_pass import SinglePassLNBank

__all__ = [
    "BANK_CLASSES",
    "latest_checkpoint",
    "load_bank",
    "load_checkpoint",
    "save_bank",
    "save_checkpoint",
    "task_checkpoint_dir",
]

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
BANK_CLASSES: dict[str, type[LNBank]] = {
    "LNBank": LNBank,
    "SinglePassLNBank": SinglePassLNBank,
    "LateSelectionLNBank": LateSelectionLNBank,
}
_TASK_DIR = re.compile(r"^task_(\d{3,})$")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Cannot write {type(obj).__name__} to a checkpoint's meta.json.")


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` and the JSON `meta` to the folder `path`, atomically."""
    with atomic_directory(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT_VERSION, **meta}, f, indent=1, default=_json_default)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint`: `(tensors, meta)`."""
    path = Path(path)
    for name in (TENSORS_FILE, META_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not an lntune checkpoint: {name} is missing.")
    with open(path / META_FILE, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, this lntune reads {FORMAT_VERSION}.")
    return load_file(str(path / TENSORS_FILE)), meta


def save_bank(bank: LNBank, path: str | os.PathLike[str], state: Optional[dict[str, Any]] = None) -> Path:
    """Save a bank's tasks, adapters, keys and heads (plus an optional JSON `state`) to the folder `path`."""
    bank.validate()
    return save_checkpoint(path, bank.state_tensors(), {"bank": bank.manifest(), "state": state or {}})


def _lntune_config(d: dict[str, Any]) -> LNTuneConfig:
    names = {f.name for f in dataclasses.fields(LNTuneConfig) if f.init}
    return LNTuneConfig(**{k: v for k, v in d.items() if k in names and k != "peft_type"})


def load_bank(
    path: str | os.PathLike[str], encoder: nn.Module, device: Optional[torch.device | str] = None
) -> tuple[LNBank, dict[str, Any]]:
    """Rebuild a saved bank on `encoder` (the same backbone it was trained on): `(bank, state)`.

    Raises a ValueError if the checkpoint's keys, adapters and tasks disagree in number or shape.
    """
    tensors, meta = load_checkpoint(path)
    m = meta.get("bank")
    if not isinstance(m, dict) or "class" not in m:
        raise ValueError(f"{path} holds no LN bank (meta.json lacks 'bank').")
    if m["class"] not in BANK_CLASSES:
        raise ValueError(f"{path}: unknown bank class {m['class']!r}; known: {sorted(BANK_CLASSES)}.")
    cls = BANK_CLASSES[m["class"]]
    bank = cls(
        encoder,
        num_classes=m["num_classes"],
        key_mode=m["key_mode"],
        lntune_config=_lntune_config(m["lntune_config"]),
        prefix=m["prefix"],
        seed=m["seed"],
        **({"router": m["router"], "shrinkage": m.get("shrinkage")} if m.get("router", "keys") != "keys" else {}),
        **({"selection_layer": m["selection_layer"]} if "selection_layer" in m else {}),
        **({"query_layers": m["query_layers"]} if m.get("query_layers", 1) != 1 else {}),
    )
    if bank.dim != m["dim"]:
        raise ValueError(f"{path} was saved for features of size {m['dim']}, this encoder gives {bank.dim}.")
    if device is not None:
        bank.to(device)
    for classes in m["task_classes"]:
        bank.add_task(classes)
    bank.load_state_tensors(tensors)
    bank.validate()
    return bank, meta.get("state", {})


def task_checkpoint_dir(root: str | os.PathLike[str], t: int) -> Path:
    """Where the checkpoint after task `t` goes: `root/task_{t:03d}`."""
    return Path(root) / f"task_{t:03d}"


def latest_checkpoint(root: str | os.PathLike[str]) -> Optional[tuple[int, Path]]:
    """`(t, folder)` of the checkpoint of the latest finished task under `root`, or None if there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for entry in root.iterdir():
        match = _TASK_DIR.match(entry.name)
        if match and (entry / META_FILE).is_file() and (entry / TENSORS_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return max(found) if found else None
