# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""recipes/continual/seed_table.py: mean ± std over seeds, and choosing a prediction rule on validation runs only."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "recipes" / "continual" / "seed_table.py"


@pytest.fixture(scope="module")
def seed_table():
    spec = importlib.util.spec_from_file_location("seed_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, seed: int, split: str, task: float, lda_head: float) -> str:
    rules = {
        "seen": {"final_avg_acc": 0.4, "avg_inc_acc": 0.5, "forgetting": 0.2},
        "task": {"final_avg_acc": task, "avg_inc_acc": 0.9, "forgetting": 0.1},
        "lda+head": {"final_avg_acc": lda_head, "avg_inc_acc": 0.9, "forgetting": 0.1},
    }
    metrics = {
        "seed": seed,
        "evaluation_split": split,
        "methods": {
            "nmc": {"final_avg_acc": 0.7, "avg_inc_acc": 0.8, "forgetting": 0.1, "task_id_acc": [1.0, 0.8]},
            "ln-bank": {
                "prediction": "lda+head",
                "predictions": rules,
                "task_id_acc": [1.0, 0.85],
                **rules["lda+head"],
            },
        },
    }
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def test_choose_picks_the_best_mean_rule_on_validation_runs(seed_table, tmp_path, capsys):
    runs = [
        write_run(tmp_path / "a", 0, "validation", 0.82, 0.80),
        write_run(tmp_path / "b", 1, "validation", 0.78, 0.79),
    ]
    out = seed_table.main([*runs, "--choose", "--json", str(tmp_path / "t.json")])
    assert out["chosen"] == {"ln-bank": "task"}  # mean 0.80 vs 0.795, although lda+head wins seed 1
    assert out["values"]["ln-bank/task"]["final_avg_acc"] == [0.82, 0.78]
    printed = capsys.readouterr().out
    assert "evaluated on the validation split" in printed and "ln-bank: choose prediction 'task'" in printed
    assert json.loads((tmp_path / "t.json").read_text())["chosen"] == {"ln-bank": "task"}


def test_choose_refuses_test_runs_and_mixed_splits(seed_table, tmp_path):
    test_run = write_run(tmp_path / "t", 0, "test", 0.82, 0.80)
    assert "chosen" not in seed_table.main([test_run])
    with pytest.raises(ValueError, match="must not be done on the test set"):
        seed_table.main([test_run, "--choose"])
    val_run = write_run(tmp_path / "v", 1, "validation", 0.82, 0.80)
    with pytest.raises(ValueError, match="evaluated on different splits"):
        seed_table.main([test_run, val_run])
