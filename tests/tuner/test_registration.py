# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""`import lntune` adds the "lntune" method to peft and changes nothing else: other methods save exactly as with peft
alone, peft's registries keep their built-in entries, and an old peft fails at import with the fix in the message."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import threading
from pathlib import Path

import peft.peft_model
import pytest
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

import lntune
from lntune import LNTuneConfig
from lntune.tuner import registration

from ..models import build

ROOT = Path(__file__).resolve().parents[2]

# Saves a tiny LoRA adapter (random, seeded) to `out`; with `with_lntune`, first imports lntune and saves an lntune
# adapter in the same process, so whatever lntune swaps during its own saves must be back for the LoRA save. Both sides
# run in fresh interpreters with one hash seed: peft writes `target_modules` (a set) in set order.
SAVE_LORA = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

out, with_lntune = sys.argv[1], sys.argv[2] == "1"
if with_lntune:
    import lntune

    torch.manual_seed(0)
    norm_model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    get_peft_model(norm_model, lntune.LNTuneConfig(init_weights=False)).save_pretrained(out + "-lntune")
torch.manual_seed(0)
base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
model = get_peft_model(base, LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
model.save_pretrained(out)
assert ("lntune" in sys.modules) == with_lntune
"""


def _save_lora(out: Path, with_lntune: bool) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-c", SAVE_LORA, str(out), "1" if with_lntune else "0"]
    subprocess.run(cmd, check=True, cwd=str(ROOT), env=env, timeout=300)


def _save_lora_here(out: Path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    get_peft_model(base, LoraConfig(r=2, target_modules=["0"])).save_pretrained(out)


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _save_lntune(out: Path) -> None:
    base, _, _ = build("bert")
    get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False)).save_pretrained(out)


def test_lora_save_is_byte_and_mode_identical_with_and_without_lntune(tmp_path: Path) -> None:
    _save_lora(tmp_path / "with", with_lntune=True)
    _save_lora(tmp_path / "without", with_lntune=False)
    assert (tmp_path / "with-lntune" / "adapter_model.safetensors").exists()
    with_lntune, without = _files(tmp_path / "with"), _files(tmp_path / "without")
    assert "adapter_model.safetensors" in without
    assert with_lntune.keys() == without.keys()
    for name in without:
        assert with_lntune[name][0] == without[name][0], f"{name}: bytes differ"
        assert oct(with_lntune[name][1]) == oct(without[name][1]), f"{name}: file mode differs"


def test_lora_save_in_another_thread_during_an_lntune_save_uses_peft_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The atomic writer is chosen per context: a LoRA save running alongside an lntune save is not affected."""
    calls: list[str] = []
    monkeypatch.setattr(registration, "atomic_save_file", lambda *a, **k: calls.append("atomic"))
    with registration._atomic_adapter_writes():
        assert peft.peft_model.safe_save_file is registration._dispatching_save_file
        thread = threading.Thread(target=_save_lora_here, args=(tmp_path / "lora",))
        thread.start()
        thread.join()
    assert calls == []
    assert safetensors.torch.load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert peft.peft_model.safe_save_file is safetensors.torch.save_file


def test_lntune_save_goes_through_the_atomic_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = registration.atomic_save_file

    def spy(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        seen.append(os.path.basename(filename))
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(registration, "atomic_save_file", spy)
    _save_lntune(tmp_path)
    assert seen == ["adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert PeftModel.from_pretrained(build("bert")[0], tmp_path).peft_config["default"].base_norms


def test_import_leaves_peft_registries_unchanged() -> None:
    """Snapshot peft's registries in a fresh interpreter before and after `import lntune`."""
    code = """
import inspect, peft, peft.peft_model, safetensors.torch
from peft import PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

def snapshot():
    return (
        dict(PEFT_TYPE_TO_CONFIG_MAPPING), dict(PEFT_TYPE_TO_TUNER_MAPPING), dict(PEFT_TYPE_TO_PREFIX_MAPPING),
        [m for m in PeftType], peft.peft_model.safe_save_file, inspect.signature(PeftModel.save_pretrained),
    )

before = snapshot()
import lntune
after = snapshot()
for b, a in zip(before[:3], after[:3]):
    assert {k: v for k, v in a.items() if k != "LNTUNE"} == b
    assert "LNTUNE" in a and "LNTUNE" not in b
assert [m for m in after[3] if m != "LNTUNE"] == before[3]
assert after[4] is before[4] is safetensors.torch.save_file
assert after[5] == before[5]
assert PeftModel.save_pretrained.__wrapped__.__qualname__ == "PeftModel.save_pretrained"
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=str(ROOT), capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip().endswith("ok")


def test_old_peft_fails_at_import_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.17.1" if name == "peft" else real(name))
    with pytest.raises(ImportError) as info:
        lntune._check_peft_version()
    message = str(info.value)
    assert f"peft >= {lntune.MIN_PEFT_VERSION}" in message and "0.17.1" in message
    assert f"pip install 'peft>={lntune.MIN_PEFT_VERSION}'" in message


def test_supported_peft_passes_the_check() -> None:
    lntune._check_peft_version()  # the installed peft: this suite runs on the oldest and the newest supported
