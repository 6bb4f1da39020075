# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""recipes/continual/layer_task_id.py on a tiny random ViT and a few real CIFAR-10 images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ..models import SHARED_DATA

SCRIPT = Path(__file__).resolve().parents[2] / "recipes" / "continual" / "layer_task_id.py"
CIFAR10 = SHARED_DATA / "cifar10"


def test_layer_task_id_writes_one_row_per_norm(tiny_vit: Path, tmp_path: Path) -> None:
    if not CIFAR10.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10}")
    spec = importlib.util.spec_from_file_location("layer_task_id", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    argv = ["--data", str(CIFAR10), "--model", str(tiny_vit), "--tasks", "5", "--output_dir", str(out)]
    rows = script.main(argv + ["--max_train_per_class", "4", "--max_test_per_class", "2", "--key_steps", "3"])
    assert len(rows) == 2 * 2 + 1  # two norms per block and the final one
    for row in rows:
        assert set(script.COLUMNS) <= set(row) and all(0 <= row[c] <= 100 for c in script.COLUMNS)
    # the first norm sees the class token + its position embedding, the same for every image: one task wins all
    assert all(rows[0][c] == pytest.approx(100 / 5) for c in script.COLUMNS)
    saved = json.loads((out / "layer_task_id.json").read_text())
    assert saved["rows"] == rows and saved["header"]["test_samples"] == 20
    assert (out / "layer_task_id.png").stat().st_size > 0 and "| layer |" in (out / "layer_task_id.md").read_text()
