# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Continual-learning metrics on an accuracy matrix, under the two averaging protocols papers use.

``acc[i][j]`` is the accuracy on task ``j``'s test set after training task ``i`` (``j <= i``); entries above the
diagonal are not defined (NaN; any value there is ignored). Accuracies are used in whatever unit they come in
(fractions or percentages): every metric is in the same unit.

Protocols for the accuracy ``A_t`` after step ``t`` (they differ by several points when tasks have unequal test
sets, e.g. a LAMDA-PILOT split with a small last task):

- ``"task_mean"``: ``A_t = mean_{j<=t} acc[t][j]``, the mean of per-task accuracies (GEM / Chaudhry et al.).
- ``"sample"``: ``A_t`` = accuracy over all seen test samples pooled, i.e. ``sum_j n_test[j] acc[t][j] /
  sum_j n_test[j]`` (iCaRL / PyCIL / LAMDA-PILOT "top-1 accuracy on all seen classes").

Forgetting and backward transfer average over tasks ``j < T-1``; the ``"sample"`` protocol weights task ``j`` by
``n_test[j]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "PROTOCOLS",
    "accuracy_matrix_from_predictions",
    "average_incremental_accuracy",
    "backward_transfer",
    "final_average_accuracy",
    "forgetting",
    "incremental_accuracies",
    "summarize",
    "task_id_accuracy",
]

PROTOCOLS = ("task_mean", "sample")


def check_acc_matrix(acc: Any) -> np.ndarray:
    """Validate ``acc`` (T x T, finite on and below the diagonal) and return a float copy, NaN above the diagonal."""
    try:
        a = np.array(acc, dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged lists, strings, ...
        raise ValueError(
            f"acc must be a square T x T matrix of numbers (NaN above the diagonal); could not read it: {e}"
        ) from None
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(
            f"acc must be a square T x T matrix with T >= 1 (acc[i][j] = accuracy on task j after training task i), "
            f"got shape {a.shape}."
        )
    lower = np.tril(np.ones(a.shape, dtype=bool))
    bad = lower & ~np.isfinite(a)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(
            f"acc[{i}][{j}] is {a[i, j]}; every entry on or below the diagonal (j <= i) must be a finite accuracy "
            f"({int(bad.sum())} are not). Only entries above the diagonal may be NaN."
        )
    a[~lower] = np.nan
    return a


def _check_n_test(n_test: Any, num_tasks: int) -> np.ndarray:
    if n_test is None:
        raise ValueError('protocol="sample" needs n_test, the number of test samples of each task.')
    n = np.asarray(n_test, dtype=np.float64)
    if n.shape != (num_tasks,):
        raise ValueError(f"n_test must hold one count per task ({num_tasks}), got shape {n.shape}.")
    if not np.all(np.isfinite(n)) or np.any(n <= 0) or np.any(np.mod(n, 1) != 0):
        raise ValueError(f"n_test must hold positive integer counts, got {n.tolist()}.")
    return n


def _weights(protocol: str, n_test: Any, num_tasks: int) -> np.ndarray:
    if protocol == "task_mean":
        return np.ones(num_tasks)
    if protocol == "sample":
        return _check_n_test(n_test, num_tasks)
    raise ValueError(f"Unknown protocol {protocol!r}; use one of {PROTOCOLS}.")


def incremental_accuracies(acc: Any, n_test: Any = None, protocol: str = "task_mean") -> np.ndarray:
    """``A_t`` for every step ``t`` (length-T array) under ``protocol``."""
    a = check_acc_matrix(acc)
    w = _weights(protocol, n_test, a.shape[0])
    return np.array([np.dot(a[t, : t + 1], w[: t + 1]) / w[: t + 1].sum() for t in range(a.shape[0])])


def final_average_accuracy(acc: Any, n_test: Any = None, protocol: str = "task_mean") -> float:
    """``A_T``: accuracy over all tasks after the last step."""
    return float(incremental_accuracies(acc, n_test, protocol)[-1])


def average_incremental_accuracy(acc: Any, n_test: Any = None, protocol: str = "task_mean") -> float:
    """``Ā = mean_t A_t`` over all steps (the first step included, as in iCaRL / PyCIL)."""
    return float(incremental_accuracies(acc, n_test, protocol).mean())


def forgetting(acc: Any, n_test: Any = None, protocol: str = "task_mean") -> float:
    """Average forgetting: mean over ``j < T-1`` of ``max_{j<=i<T-1} acc[i][j] - acc[T-1][j]``; 0.0 when T = 1."""
    a = check_acc_matrix(acc)
    T = a.shape[0]
    w = _weights(protocol, n_test, T)
    if T == 1:
        return 0.0
    drops = np.array([np.max(a[j : T - 1, j]) - a[T - 1, j] for j in range(T - 1)])
    return float(np.dot(drops, w[: T - 1]) / w[: T - 1].sum())


def backward_transfer(acc: Any, n_test: Any = None, protocol: str = "task_mean") -> float:
    """BWT (Lopez-Paz & Ranzato, 2017): mean over ``j < T-1`` of ``acc[T-1][j] - acc[j][j]``; 0.0 when T = 1.

    Negative values mean forgetting; unlike :func:`forgetting` it compares with the accuracy right after learning
    the task, not with the best one.
    """
    a = check_acc_matrix(acc)
    T = a.shape[0]
    w = _weights(protocol, n_test, T)
    if T == 1:
        return 0.0
    diffs = a[T - 1, : T - 1] - np.diag(a)[: T - 1]
    return float(np.dot(diffs, w[: T - 1]) / w[: T - 1].sum())


def _as_1d(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}.")
    return arr


def task_id_accuracy(pred_task: Any, true_task: Any) -> float:
    """Fraction of samples whose predicted task id equals the true one (for task-keyed banks / routers)."""
    p, t = _as_1d(pred_task, "pred_task"), _as_1d(true_task, "true_task")
    if p.shape != t.shape:
        raise ValueError(f"pred_task and true_task must have the same length, got {len(p)} and {len(t)}.")
    if len(p) == 0:
        raise ValueError("task_id_accuracy needs at least one sample, got empty arrays.")
    return float(np.mean(p == t))


def accuracy_matrix_from_predictions(
    preds: Sequence[Any], labels: Sequence[Any], task_ids: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Build ``(acc, n_test)`` from per-step evaluations.

    ``preds[t]``, ``labels[t]`` and ``task_ids[t]`` are 1-D arrays over the test samples evaluated after step ``t``
    (predicted and true labels in the same label space, and the task each sample belongs to). Tasks ``j <= t``
    must all be present; samples of tasks ``j > t`` are ignored, so evaluating the full test set at every step is
    fine. Each task must have the same number of test samples at every step (``n_test[j]``, returned).
    """
    T = len(preds)
    if T == 0 or len(labels) != T or len(task_ids) != T:
        raise ValueError(
            f"preds, labels and task_ids need one entry per step (T >= 1); got {len(preds)}, {len(labels)}, "
            f"{len(task_ids)}."
        )
    acc = np.full((T, T), np.nan)
    n_test = np.zeros(T, dtype=np.int64)
    for t in range(T):
        p = _as_1d(preds[t], f"preds[{t}]")
        y = _as_1d(labels[t], f"labels[{t}]")
        k = _as_1d(task_ids[t], f"task_ids[{t}]")
        if not p.shape == y.shape == k.shape:
            raise ValueError(
                f"Step {t}: preds, labels and task_ids must have the same length, got {len(p)}, {len(y)}, {len(k)}."
            )
        for j in range(t + 1):
            mask = k == j
            n = int(mask.sum())
            if n == 0:
                raise ValueError(f"Step {t}: no test samples of task {j}; evaluate every seen task (0..{t}).")
            if t == j:
                n_test[j] = n
            elif n != n_test[j]:
                raise ValueError(
                    f"Task {j} has {n} test samples at step {t} but {n_test[j]} at step {j}; use the same test set "
                    "for a task at every step."
                )
            acc[t, j] = float(np.mean(p[mask] == y[mask]))
    return acc, n_test


def _jsonable(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def summarize(acc: Any, n_test: Any, task_id_acc: float | Sequence[float] | None = None) -> dict[str, Any]:
    """JSON-ready summary of a run (for ``metrics.json``).

    Keys without a suffix use the ``"task_mean"`` protocol (mean of per-task accuracies); keys ending in
    ``_sample`` use the ``"sample"`` protocol (all seen test samples pooled):

    ``num_tasks``, ``final_avg_acc``, ``final_avg_acc_sample``, ``avg_inc_acc``, ``avg_inc_acc_sample``,
    ``forgetting``, ``forgetting_sample``, ``backward_transfer``, ``backward_transfer_sample``, ``acc_per_step``,
    ``acc_per_step_sample`` (the ``A_t`` lists), ``acc_matrix`` (lists, ``None`` above the diagonal), ``n_test``
    (ints), ``task_id_acc`` (the given float, list of per-step floats, or ``None``), ``protocols`` (a one-line
    description of both protocols).
    """
    a = check_acc_matrix(acc)
    T = a.shape[0]
    n = _check_n_test(n_test, T)
    steps = incremental_accuracies(a, protocol="task_mean")
    steps_s = incremental_accuracies(a, n, protocol="sample")
    if task_id_acc is None:
        tid: float | list[float] | None = None
    elif isinstance(task_id_acc, (int, float, np.floating, np.integer)):
        tid = float(task_id_acc)
    else:
        tid = [float(v) for v in task_id_acc]
    return {
        "num_tasks": T,
        "final_avg_acc": float(steps[-1]),
        "final_avg_acc_sample": float(steps_s[-1]),
        "avg_inc_acc": float(steps.mean()),
        "avg_inc_acc_sample": float(steps_s.mean()),
        "forgetting": forgetting(a, protocol="task_mean"),
        "forgetting_sample": forgetting(a, n, protocol="sample"),
        "backward_transfer": backward_transfer(a, protocol="task_mean"),
        "backward_transfer_sample": backward_transfer(a, n, protocol="sample"),
        "acc_per_step": steps.tolist(),
        "acc_per_step_sample": steps_s.tolist(),
        "acc_matrix": [[_jsonable(v) for v in row] for row in a.tolist()],
        "n_test": [int(v) for v in n],
        "task_id_acc": tid,
        "protocols": "no suffix: task_mean (mean of per-task accuracies); _sample: all seen test samples pooled",
    }
