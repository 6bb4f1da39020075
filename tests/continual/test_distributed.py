# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""recipes/continual/run.py in two real processes (torchrun, gloo on CPU) against one process, and its resume.

Same tiny random ViT and few CIFAR-10 images as test_recipe.py, with sizes that split unevenly: a stage-1 batch of 7
over 15 training samples per task (7, 7, 1: one process gets nothing from the last batch) and frozen passes in
batches of 3 (10 test samples: batches 3, 3 | 3, 1 on the two processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lntune.continual import ContinualConfig, RunContext, TaskStream, make_class_incremental_split
from lntune.continual.distributed import positions, shuffled_batches, train_batches

from .helpers import CIFAR10_DIR, RECIPE_SCRIPT, REQUIRED_METRICS, load_recipe

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT_S = 180
METHODS = ("ln-bank", "ln-bank-1pass", "nmc", "seq-ln", "joint-ln")
# Stage 1 is the only step that is not bit-identical to one process: each process runs its share of a batch through
# the model and the shares' gradients are summed, so activations and gradient sums are rounded in another order. The
# LN deltas and heads, hence every later loss, differ by float32 round-off (relative ~1e-7 here; 1e-4 leaves room for
# other BLAS builds); the test predictions (argmax of logits) are the same on this data, so accuracies, forgetting
# and task-id accuracies must match exactly. Queries, keys, NMC and the key-mode comparison are bit-identical (frozen
# passes run the very batches of one process, and what trains on them runs identically on every process).
RTOL = 1e-4


def _argv(tiny_vit: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(CIFAR10_DIR), "--model", str(tiny_vit), "--tasks", "2", "--max_train_per_class", "3",
        "--max_test_per_class", "2", "--epochs", "1", "--batch_size", "7", "--eval_batch_size", "3",
        "--rectify_epochs", "2", "--layer_key_epochs", "2", "--key_epochs", "3", "--method", ",".join(METHODS),
        "--output_dir", str(out), "--no_progress", "--cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def recipe():
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR}")
    if not TORCHRUN.exists():
        pytest.skip("torchrun is not installed next to the interpreter")
    return load_recipe()


def _torchrun(argv: list[str], fail_after: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LNTUNE_CONTINUAL_FAIL_AFTER", None)
    if fail_after is not None:
        env["LNTUNE_CONTINUAL_FAIL_AFTER"] = fail_after
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(RECIPE_SCRIPT), *argv]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{err.stderr}")


def _assert_close(got, ref, path: str = "") -> None:
    """Equal structure; ints, strings and None equal; floats equal within RTOL (relative) or 1e-6 (absolute)."""
    if isinstance(ref, dict):
        assert sorted(got) == sorted(ref), path
        for k in ref:
            _assert_close(got[k], ref[k], f"{path}/{k}")
    elif isinstance(ref, list):
        assert len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            _assert_close(g, r, f"{path}[{i}]")
    elif isinstance(ref, float):
        assert got == pytest.approx(ref, rel=RTOL, abs=1e-6), path
    else:
        assert got == ref, path


def _without_stats(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "train_stats"}


@pytest.fixture(scope="module")
def one_process(recipe, tiny_vit, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    recipe.main(_argv(tiny_vit, out))
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process(recipe, tiny_vit, one_process, tmp_path):
    # killed after a checkpoint (ln-bank done, ln-bank-1pass after task 0): both processes stop there
    out = tmp_path / "run"
    proc = _torchrun(_argv(tiny_vit, out), fail_after="ln-bank-1pass:0")
    assert proc.returncode != 0 and "SimulatedFailure" in proc.stderr, proc.stderr[-4000:]
    assert not (out / "metrics.json").exists()
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in (checkpoints / "ln-bank").iterdir()) == ["task_000", "task_001"]
    assert sorted(p.name for p in (checkpoints / "ln-bank-1pass").iterdir()) == ["task_000"]

    # resumed in 2 processes: ln-bank from its last checkpoint, ln-bank-1pass from task 0, the others from scratch
    proc = _torchrun(_argv(tiny_vit, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert "[ln-bank-1pass] resumed after task 0" in log
    assert log.count("***** Running continual learning *****") == 1  # only the main process logs
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary files left behind
    for name in ("ln-bank", "ln-bank-1pass", "nmc", "seq-ln"):
        assert (out / f"acc_matrix_{name}.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED_METRICS + ("methods", "key_mode_comparison"):
        assert key in metrics, key
    assert metrics["machine"]["num_processes"] == 2 and one_process["machine"]["num_processes"] == 1

    # the one-process metrics: every prediction-based number exactly, the training statistics up to RTOL
    assert metrics["config"] == one_process["config"]
    assert metrics["key_mode_comparison"] == one_process["key_mode_comparison"]
    assert metrics["methods"]["nmc"] == one_process["methods"]["nmc"]
    for m in METHODS:
        got, ref = metrics["methods"][m], one_process["methods"][m]
        assert _without_stats(got) == _without_stats(ref), m
        _assert_close(got.get("train_stats"), ref.get("train_stats"), m)


def test_shards_cover_every_row_once_in_whole_batches():
    for n, size, world in [(10, 3, 2), (20, 3, 2), (7, 8, 2), (30, 4, 3), (1, 5, 4), (0, 3, 2)]:
        parts = [positions(n, size, r, world) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        for r, part in enumerate(parts):  # process r holds batches r, r + world, ... of the one-process batching
            expected = [i for b in range(r, -(-n // size), world) for i in range(b * size, min(b * size + size, n))]
            assert part.tolist() == expected


def test_shuffled_batches_draw_like_the_one_process_loop():
    stream = _tiny_stream()
    ctx = RunContext(stream=stream, make_encoder=lambda: None, config=ContinualConfig(batch_size=3), progress=False)
    rows = np.arange(len(stream.train))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):  # two epochs from one generator
        single = [idx.tolist() for _, idx, _ in train_batches(ctx, rows, g1, "")]
        drawn = [rows[b].tolist() for b in shuffled_batches(len(rows), 3, 0, g2)]
        assert drawn == single
    assert torch.equal(g1.get_state(), g2.get_state())


def _tiny_stream() -> TaskStream:
    split = make_class_incremental_split(4, num_tasks=2, seed=0)
    labels = np.repeat(np.arange(4), 2)
    data = [(torch.zeros(1), int(y)) for y in labels]
    inc = split.to_incremental_labels(labels)
    return TaskStream(split, data, data, inc, inc, lambda xs: {"x": torch.stack(xs)})
