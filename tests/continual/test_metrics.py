# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Continual-learning metrics against hand-computed values, under both protocols, plus the heatmap writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lntune.continual.metrics import (
    accuracy_matrix_from_predictions,
    average_incremental_accuracy,
    backward_transfer,
    final_average_accuracy,
    forgetting,
    incremental_accuracies,
    summarize,
    task_id_accuracy,
)
from lntune.continual.plots import plot_accuracy_matrix

NAN = float("nan")
# acc[i][j]: accuracy on task j after training task i.
ACC = [[0.9, NAN, NAN], [0.95, 0.8, NAN], [0.6, 0.4, 0.9]]
N_TEST = [100, 300, 100]


def test_task_mean_protocol_by_hand() -> None:
    np.testing.assert_allclose(incremental_accuracies(ACC), [0.9, 0.875, 1.9 / 3])
    assert final_average_accuracy(ACC) == pytest.approx(1.9 / 3)
    assert average_incremental_accuracy(ACC) == pytest.approx((0.9 + 0.875 + 1.9 / 3) / 3)
    # Task 0: best 0.95 (after task 1) -> 0.6; task 1: 0.8 -> 0.4.
    assert forgetting(ACC) == pytest.approx((0.35 + 0.4) / 2)
    assert backward_transfer(ACC) == pytest.approx((-0.3 - 0.4) / 2)


def test_sample_protocol_by_hand() -> None:
    np.testing.assert_allclose(
        incremental_accuracies(ACC, N_TEST, "sample"), [0.9, (95 + 240) / 400, (60 + 120 + 90) / 500]
    )
    assert final_average_accuracy(ACC, N_TEST, "sample") == pytest.approx(0.54)
    assert average_incremental_accuracy(ACC, N_TEST, "sample") == pytest.approx((0.9 + 0.8375 + 0.54) / 3)
    assert forgetting(ACC, N_TEST, "sample") == pytest.approx((100 * 0.35 + 300 * 0.4) / 400)
    assert backward_transfer(ACC, N_TEST, "sample") == pytest.approx((100 * -0.3 + 300 * -0.4) / 400)


def test_single_task_and_values_above_diagonal_ignored() -> None:
    assert final_average_accuracy([[0.7]]) == pytest.approx(0.7)
    assert average_incremental_accuracy([[0.7]], [5], "sample") == pytest.approx(0.7)
    assert forgetting([[0.7]]) == 0.0 and backward_transfer([[0.7]]) == 0.0
    full = [[0.9, 0.1, 0.1], [0.95, 0.8, 0.1], [0.6, 0.4, 0.9]]
    assert final_average_accuracy(full) == final_average_accuracy(ACC)
    assert summarize(full, N_TEST)["acc_matrix"][0] == [0.9, None, None]


@pytest.mark.parametrize(
    "acc, match",
    [
        ([[0.9, 0.1]], r"square T x T .* shape \(1, 2\)"),
        ([0.9, 0.8], r"shape \(2,\)"),
        ([], "shape"),
        ([[0.9, NAN], [NAN, 0.8]], r"acc\[1\]\[0\] is nan"),
        ([[0.9], [0.8, 0.7]], "could not read"),
    ],
)
def test_bad_matrices(acc: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        final_average_accuracy(acc)


def test_bad_protocol_and_counts() -> None:
    with pytest.raises(ValueError, match="Unknown protocol 'pooled'"):
        forgetting(ACC, N_TEST, "pooled")
    with pytest.raises(ValueError, match="needs n_test"):
        final_average_accuracy(ACC, protocol="sample")
    with pytest.raises(ValueError, match="one count per task"):
        final_average_accuracy(ACC, [1, 2], "sample")
    with pytest.raises(ValueError, match="positive integer"):
        summarize(ACC, [100, 0, 100])


def test_matrix_from_predictions_matches_pooled_accuracy() -> None:
    rng = np.random.default_rng(0)
    n_test = [4, 6, 2]
    task = np.repeat(np.arange(3), n_test)
    labels = rng.integers(0, 5, size=len(task))
    preds, labs, tids = [], [], []
    for _ in range(3):
        p = np.where(rng.random(len(task)) < 0.6, labels, (labels + 1) % 5)
        preds.append(p)
        labs.append(labels)
        tids.append(task)  # the full test set each step: tasks j > t are ignored
    acc, n = accuracy_matrix_from_predictions(preds, labs, tids)
    np.testing.assert_array_equal(n, n_test)
    assert np.isnan(acc[0, 1]) and np.isnan(acc[1, 2])
    for t in range(3):
        seen = task <= t
        pooled = np.mean(preds[t][seen] == labels[seen])
        assert incremental_accuracies(acc, n, "sample")[t] == pytest.approx(pooled)
        for j in range(t + 1):
            assert acc[t, j] == pytest.approx(np.mean(preds[t][task == j] == labels[task == j]))


def test_matrix_from_predictions_errors() -> None:
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="no test samples of task 1"):
        accuracy_matrix_from_predictions([y, y], [y, y], [np.zeros(3), np.zeros(3)])
    with pytest.raises(ValueError, match="Task 0 has 2 test samples at step 1 but 3 at step 0"):
        accuracy_matrix_from_predictions([y, y], [y, y], [np.zeros(3), np.array([0, 0, 1])])
    with pytest.raises(ValueError, match="same length"):
        accuracy_matrix_from_predictions([y], [y[:2]], [np.zeros(3)])
    with pytest.raises(ValueError, match="one entry per step"):
        accuracy_matrix_from_predictions([y, y], [y], [y])


def test_task_id_accuracy() -> None:
    assert task_id_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="same length"):
        task_id_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        task_id_accuracy([], [])


def test_summarize_keys_and_json() -> None:
    s = summarize(ACC, N_TEST, task_id_acc=0.5)
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    assert set(s) == {
        "num_tasks",
        "final_avg_acc",
        "final_avg_acc_sample",
        "avg_inc_acc",
        "avg_inc_acc_sample",
        "forgetting",
        "forgetting_sample",
        "backward_transfer",
        "backward_transfer_sample",
        "acc_per_step",
        "acc_per_step_sample",
        "acc_matrix",
        "n_test",
        "task_id_acc",
        "protocols",
    }
    assert s["final_avg_acc"] == pytest.approx(1.9 / 3) and s["final_avg_acc_sample"] == pytest.approx(0.54)
    assert s["forgetting"] == pytest.approx(0.375) and s["forgetting_sample"] == pytest.approx(0.3875)
    assert s["acc_matrix"] == [[0.9, None, None], [0.95, 0.8, None], [0.6, 0.4, 0.9]]
    assert s["n_test"] == N_TEST and s["task_id_acc"] == 0.5 and s["num_tasks"] == 3
    assert summarize([[1.0]], [3])["task_id_acc"] is None
    assert summarize(ACC, N_TEST, task_id_acc=[1.0, 0.9, 0.8])["task_id_acc"] == [1.0, 0.9, 0.8]
    # A matrix read back from metrics.json (None above the diagonal) is accepted again.
    assert summarize(s["acc_matrix"], s["n_test"])["avg_inc_acc"] == pytest.approx(s["avg_inc_acc"])
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_plot_writes_png_atomically(tmp_path) -> None:
    out = plot_accuracy_matrix(ACC, tmp_path / "plots" / "acc.png", title="toy")
    assert out == tmp_path / "plots" / "acc.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["acc.png"]  # no temp file left behind
    pct = plot_accuracy_matrix(np.array([[90.0]]), tmp_path / "pct.png")  # percentages and T = 1 work too
    assert pct.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="square"):
        plot_accuracy_matrix([[1.0, 2.0]], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
