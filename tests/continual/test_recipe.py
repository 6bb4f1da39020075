# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""recipes/continual/run.py end to end on a few real CIFAR-10 images with a tiny random ViT (32 x 32 inputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .helpers import CIFAR10_DIR, RECIPE_SCRIPT, REQUIRED_METRICS, load_recipe, recipe_argv


@pytest.fixture(scope="module")
def recipe():
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR}")
    return load_recipe()


@pytest.fixture(scope="module")
def full_run(recipe, tiny_vit, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    recipe.main(recipe_argv(tiny_vit, out, "--method", "all"))
    return out


def test_tiny_run_writes_metrics_and_plots(full_run):
    metrics = json.loads((full_run / "metrics.json").read_text())
    for key in REQUIRED_METRICS + ("seed", "config", "machine", "methods", "key_mode_comparison"):
        assert key in metrics, key
    assert metrics["method"] == "ln-bank" and len(metrics["acc_matrix"]) == 2
    assert sorted(metrics["methods"]) == ["joint-ln", "lda", "ln-bank", "ln-bank-1pass", "nmc", "seq-ln"]
    assert metrics["split"]["class_order"] == metrics["class_order"] and len(metrics["class_order"]) == 10
    assert sorted(metrics["key_mode_comparison"]) == ["class", "task"]
    assert metrics["config"]["image_size"] == 32 and metrics["config"]["epochs"] == 1
    for name in ("ln-bank", "ln-bank-1pass", "nmc", "seq-ln"):
        assert (full_run / f"acc_matrix_{name}.png").stat().st_size > 1000
    assert "| ln-bank |" in (full_run / "results.md").read_text()
    assert (full_run / "checkpoints" / "ln-bank" / "task_001" / "tensors.safetensors").is_file()


def test_killed_run_resumes_to_identical_metrics(recipe, tiny_vit, full_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    monkeypatch.setenv(recipe.FAIL_ENV, "ln-bank-1pass:0")
    with pytest.raises(recipe.SimulatedFailure):
        recipe.main(recipe_argv(tiny_vit, out, "--method", "all"))
    assert not (out / "metrics.json").exists()
    monkeypatch.delenv(recipe.FAIL_ENV)
    recipe.main(recipe_argv(tiny_vit, out, "--method", "all", "--resume"))
    assert (out / "metrics.json").read_bytes() == (full_run / "metrics.json").read_bytes()


def test_resume_under_another_prediction_rule_reports_that_rule(recipe, tiny_vit, full_run, tmp_path):
    """Prediction rules only read the saved per-rule predictions, so a finished run resumed with another `prediction`
    must headline that rule, not the one its checkpoints were made under (a silent mix-up before)."""
    out = tmp_path / "rerule"
    shutil.copytree(full_run, out)
    before = json.loads((full_run / "metrics.json").read_text())["methods"]
    metrics = recipe.main(
        recipe_argv(tiny_vit, out, "--method", "ln-bank,ln-bank-1pass", "--resume", "--prediction", "seen")
    )
    for name in ("ln-bank", "ln-bank-1pass"):
        old, new = before[name], metrics["methods"][name]
        assert old["prediction"] == "task" and new["prediction"] == "seen"
        assert old["predictions"]["seen"]["final_avg_acc"] != old["final_avg_acc"]  # the rules differ on this run
        assert new["final_avg_acc"] == old["predictions"]["seen"]["final_avg_acc"]
        assert new["other_prediction"]["final_avg_acc"] == old["final_avg_acc"]  # "task", the old headline
        assert new["predictions"] == old["predictions"]


def test_image_folder_without_images(recipe, tiny_vit, tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
    argv = recipe_argv(tiny_vit, tmp_path / "out") + ["--data", str(tmp_path / "data")]
    with pytest.raises(FileNotFoundError, match="No images"):
        recipe.main(argv)


def test_more_tasks_than_classes(recipe, tiny_vit, tmp_path):
    with pytest.raises(ValueError, match="more than the 10 classes"):
        recipe.main(recipe_argv(tiny_vit, tmp_path / "out") + ["--tasks", "20"])


def test_bad_flags_and_configs(recipe, tiny_vit, tmp_path):
    with pytest.raises(ValueError, match="Unknown --method"):
        recipe.main(recipe_argv(tiny_vit, tmp_path / "out", "--method", "ewc"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError, match="unknown keys \\['epochz'\\]"):
        recipe.main(["--config", str(bad)])
    with pytest.raises(ValueError, match="Config 'nope' not found"):
        recipe.main(["--config", "nope"])


def test_validation_split_holds_out_training_images(recipe, tiny_vit, tmp_path):
    args = recipe.parse_args(recipe_argv(tiny_vit, tmp_path / "out", "--evaluation_split", "validation"))
    train, held = recipe.held_out_images(args)
    assert args.validation_per_class == 2  # the test-set size per class, --max_test_per_class
    assert np.bincount(held.labels).tolist() == [2] * 10 and np.bincount(train.labels).tolist() == [4] * 10
    assert not set(held.paths) & set(train.paths)
    assert all(Path(p).parts[-3] == "train" for p in held.paths + train.paths)  # the test folder is not read
    out = tmp_path / "val"
    recipe.main(recipe_argv(tiny_vit, out, "--method", "nmc", "--evaluation_split", "validation"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation_split"] == "validation" and metrics["config"]["validation_per_class"] == 2
    assert (out / "results.md").read_text().startswith("Evaluated on data held out from training")
    with pytest.raises(ValueError, match="only applies with --evaluation_split validation"):
        recipe.parse_args(recipe_argv(tiny_vit, out, "--validation_per_class", "3"))
    with pytest.raises(ValueError, match="CLINC150 evaluates on its own val split"):
        recipe.parse_args(["--config", "clinc150_minilm_10tasks", "--evaluation_split", "validation",
                           "--validation_per_class", "3"])  # fmt: skip
    too_many = recipe.parse_args(recipe_argv(tiny_vit, out, "--evaluation_split", "validation",
                                             "--validation_per_class", "1000"))  # fmt: skip
    with pytest.raises(ValueError, match="Cannot hold out 1000 samples per class"):
        recipe.held_out_images(too_many)


def test_config_fields_parse_with_their_types(recipe):
    args = recipe.parse_args(["--key_epochs", "7", "--prediction", "seen", "--rectify", "0", "--lr", "0.1"])
    config = recipe.continual_config(args)
    assert (config.key_epochs, config.prediction, config.rectify, config.lr) == (7, "seen", False, 0.1)


def test_shipped_configs_parse(recipe):
    for path in sorted((RECIPE_SCRIPT.parent / "configs").glob("*.json")):
        args = recipe.parse_args(["--config", path.stem])
        assert args.tasks >= 2 and args.modality in ("image", "text"), path.name
        config = recipe.continual_config(args)  # validates the combination (e.g. lda+head needs the LDA router)
        # the CIFAR-10 default predicts with the head alone, the rule chosen on held-out training data
        rule = "task" if path.stem == "cifar10_vit_tiny_5tasks" else "lda+head"
        assert (config.router, config.prediction) == ("lda", rule), path.name


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar100_vit_base_10tasks", "imagenet_r_vit_base_10tasks"])
def test_gpu_configs_run_as_shipped_with_a_tiny_model(recipe, tiny_vit, tmp_path, config):
    """The GPU configs' own settings (task keys, lr scaled by batch/256, LDA router, head x LDA) on a tiny run."""
    argv = recipe_argv(tiny_vit, tmp_path / "out", "--config", config, "--method", "lda,ln-bank")
    argv += ["--compare_key_modes", "0", "--eval_batch_size", "8", "--num_workers", "0"]
    metrics = recipe.main(argv)
    bank = metrics["methods"]["ln-bank"]
    assert (bank["router"], metrics["config"]["continual"]["prediction"]) == ("lda", "lda+head")
    assert metrics["config"]["key_mode"] == "task" and metrics["config"]["lr_reference_batch"] == 256
    assert len(bank["acc_matrix"]) == 2 and bank["task_id_acc"][0] == 1.0
