# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The protocol every method follows: start or resume, checkpoint after each task, summarise per-step predictions.

A method keeps, per task, its test predictions (and selected tasks) in a JSON-ready ``state`` that is saved with each
checkpoint (:mod:`lntune.continual.checkpoint`); tasks are reseeded from ``(seed, task)``, so a run resumed from its
latest checkpoint ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .bank import LNBank
from .checkpoint import latest_checkpoint, load_bank, save_bank, task_checkpoint_dir
from .context import RunContext
from .distributed import barrier, broadcast_object
from .metrics import accuracy_matrix_from_predictions, summarize, task_id_accuracy

__all__ = [
    "HEADLINE",
    "MethodResult",
    "build_bank",
    "finish_task",
    "incremental_summary",
    "resume_point",
    "rounded",
    "start_method",
    "step_line",
]

HEADLINE = ("final_avg_acc", "final_avg_acc_sample", "avg_inc_acc", "forgetting", "acc_matrix")


@dataclass
class MethodResult:
    """One method's outcome: the `summarize` dict (or the joint upper bound's final accuracies) plus extras."""

    method: str
    summary: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.summary, **self.extras}


def incremental_summary(
    ctx: RunContext, step_preds: list[list[int]], step_task_preds: Optional[list[list[int]]]
) -> dict[str, Any]:
    """`summarize` of per-step predictions (and selected tasks, for the task-id accuracy)."""
    stream = ctx.stream
    preds, labels, task_ids, tid = [], [], [], []
    for t in range(stream.num_tasks):
        rows = stream.indices("test", t, seen=True)
        true_tasks = stream.task_of("test")[rows]
        preds.append(np.asarray(step_preds[t]))
        labels.append(stream.test_labels[rows])
        task_ids.append(true_tasks)
        if step_task_preds is not None:
            tid.append(task_id_accuracy(np.asarray(step_task_preds[t]), true_tasks))
    acc, n_test = accuracy_matrix_from_predictions(preds, labels, task_ids)
    return summarize(acc, n_test, tid if step_task_preds is not None else None)


def resume_point(ctx: RunContext, method: str) -> Optional[tuple[int, Path]]:
    """`(task, folder)` of `method`'s latest checkpoint when resuming (rank 0's view, on every process), else None."""
    root = ctx.checkpoint_dir(method)
    point = latest_checkpoint(root) if (ctx.resume and root is not None and ctx.is_main) else None
    return broadcast_object(ctx, point)  # every process resumes from the checkpoint rank 0 sees


def finish_task(ctx: RunContext, method: str, t: int, bank: LNBank, state: dict[str, Any]) -> None:
    """After task `t`: rank 0 checkpoints the bank and `state`, every process waits for it, then `after_task` runs."""
    root = ctx.checkpoint_dir(method)
    if root is not None:
        if ctx.is_main:
            save_bank(bank, task_checkpoint_dir(root, t), state)
        barrier(ctx)  # the checkpoint is in place before any process moves on (or is killed)
    if ctx.after_task is not None:
        ctx.after_task(method, t)


def build_bank(
    ctx: RunContext, cls: type[LNBank], key_mode: str = "task", router: str = "keys", query_layers: int = 1
) -> LNBank:
    """A fresh bank of `cls` on a new copy of the backbone, sized for the stream's classes, on the run's device."""
    extra: dict[str, Any] = {"router": router, "shrinkage": ctx.config.lda_shrinkage} if router != "keys" else {}
    if query_layers != 1:
        extra["query_layers"] = query_layers
    num_classes = ctx.stream.split.num_classes
    bank = cls(ctx.make_encoder(), num_classes=num_classes, key_mode=key_mode, seed=ctx.config.seed, **extra)
    return bank.to(ctx.device)


def start_method(
    ctx: RunContext, method: str, build: Callable[[], LNBank], state: dict[str, Any]
) -> tuple[LNBank, int, dict[str, Any]]:
    """`(bank, first task to run, state)`: from `method`'s latest checkpoint with `--resume` (the state saved with
    it), else `build()`, task 0 and `state`. Every process starts from the checkpoint rank 0 finds."""
    resume = resume_point(ctx, method)
    if resume is None:
        return build(), 0, state
    bank, saved = load_bank(resume[1], ctx.make_encoder(), device=ctx.device)
    ctx.log(f"[{method}] resumed after task {resume[0]} from {resume[1]}")
    return bank, resume[0] + 1, saved


def step_line(ctx: RunContext, state: dict[str, Any], t: int) -> str:
    """The log line of step `t`: accuracy on tasks `0..t` (both prediction rules) and the task-id accuracy."""
    rows = ctx.stream.indices("test", t, seen=True)
    labels = ctx.stream.test_labels[rows]
    line = f"acc on tasks 0..{t} = {float(np.mean(np.asarray(state['preds'][t]) == labels)):.4f}"
    if state.get("preds_other"):
        line += f" (other prediction: {float(np.mean(np.asarray(state['preds_other'][t]) == labels)):.4f})"
    if state.get("task_preds"):
        tid = task_id_accuracy(np.asarray(state["task_preds"][t]), ctx.stream.task_of("test")[rows])
        line += f", task-id acc = {tid:.4f}"
    return line


def rounded(x: Any) -> Any:
    """`x` with every float (also inside dicts) rounded to 4 digits, for log lines."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    return x
