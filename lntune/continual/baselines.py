# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Baselines run in the same process, on the same data and cached queries as the banks.

- ``nmc``: nearest class mean (cosine) on the frozen queries; no training.
- ``lda``: shrunk LDA on the frozen queries (class means + one shared covariance, :mod:`~.router`); no training.
- ``seq-ln``: one shared adapter and one head tuned task after task (logits restricted to the current task): the
  lower bound.
- ``joint-ln``: one adapter and one head tuned on all tasks' data at once: the upper bound (final accuracy only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bank import LNBank
from .context import RunContext, seed_task
from .protocol import MethodResult, build_bank, finish_task, incremental_summary, rounded, start_method, step_line
from .router import ClassStatistics
from .stages import evaluate, train_task_lns

__all__ = ["run_joint_ln", "run_lda", "run_nmc", "run_seq_ln", "shared_bank"]


def run_nmc(ctx: RunContext) -> MethodResult:
    """Nearest class mean (cosine) on the frozen queries: no training, no forgetting of the backbone."""
    stream = ctx.stream
    state: dict[str, Any] = {"preds": [], "task_preds": []}
    task_of_class = np.concatenate([[t] * len(stream.task_classes(t)) for t in range(stream.num_tasks)])
    means = []
    for t in range(stream.num_tasks):
        rows = stream.indices("train", t)
        q = F.normalize(ctx.cache.get("train", rows), dim=-1)
        labels = torch.from_numpy(stream.train_labels[rows]).to(q.device)
        for c in stream.task_classes(t):
            means.append(F.normalize(q[labels == c].mean(0), dim=-1))
        test_rows = stream.indices("test", t, seen=True)
        sim = F.normalize(ctx.cache.get("test", test_rows), dim=-1) @ torch.stack(means).T
        pred = sim.argmax(-1).cpu().numpy()  # classes are numbered in task order, so column c is class c
        state["preds"].append(pred.tolist())
        state["task_preds"].append(task_of_class[pred].tolist())
        ctx.log(f"[nmc] task {t}: {step_line(ctx, state, t)}")
    summary = incremental_summary(ctx, state["preds"], state["task_preds"])
    return MethodResult("nmc", summary, {"task_id_source": "nearest class"})


def run_lda(ctx: RunContext) -> MethodResult:
    """Shrunk LDA on the frozen queries (class means + one shared covariance, streamed task by task): no training,
    no stored samples. The task-id accuracy is that of the task of the predicted class (what `router="lda"` uses)."""
    stream, cfg = ctx.stream, ctx.config
    state: dict[str, Any] = {"preds": [], "task_preds": []}
    task_of_class = np.concatenate([[t] * len(stream.task_classes(t)) for t in range(stream.num_tasks)])
    queries = ctx.cache.get("train", stream.indices("train", 0)[:1])
    stats = ClassStatistics(stream.split.num_classes, queries.shape[1], cfg.lda_shrinkage).to(queries.device)
    shrinkage = []
    for t in range(stream.num_tasks):
        rows = stream.indices("train", t)
        stats.update(ctx.cache.get("train", rows), torch.from_numpy(stream.train_labels[rows]))
        pred = stats.predict(ctx.cache.get("test", stream.indices("test", t, seen=True))).cpu().numpy()
        shrinkage.append(stats.last_shrinkage)
        state["preds"].append(pred.tolist())
        state["task_preds"].append(task_of_class[pred].tolist())
        ctx.log(f"[lda] task {t}: {step_line(ctx, state, t)} shrinkage={stats.last_shrinkage:.4f}")
    summary = incremental_summary(ctx, state["preds"], state["task_preds"])
    return MethodResult("lda", summary, {"task_id_source": "class predicted by LDA", "shrinkage": shrinkage})


def shared_bank(ctx: RunContext, method: str) -> tuple[LNBank, int, dict[str, Any]]:
    """One shared adapter over all classes (seq-ln / joint-ln), fresh or resumed."""

    def build() -> LNBank:
        bank = build_bank(ctx, LNBank)
        bank.add_task(list(range(ctx.stream.split.num_classes)))
        return bank

    return start_method(ctx, method, build, {"preds": [], "stats": []})


def run_seq_ln(ctx: RunContext) -> MethodResult:
    """Lower bound: one adapter and one head tuned task after task (logits restricted to the current task)."""
    cfg, stream = ctx.config, ctx.stream
    bank, start, state = shared_bank(ctx, "seq-ln")
    for t in range(start, stream.num_tasks):
        generator = seed_task(cfg, t, 2)
        with ctx.timed("seq-ln", t, "stage1_s"):
            stats = train_task_lns(bank, t, ctx, generator, stream.task_classes(t), adapter_task=0)
        with ctx.timed("seq-ln", t, "eval_s"):
            seen = [c for s in range(t + 1) for c in stream.task_classes(s)]
            pred = evaluate(bank, t, ctx, seen, shared_adapter=True).pred_seen
        state["preds"].append(pred.tolist())
        state["stats"].append({"stage1": stats})
        ctx.log(f"[seq-ln] task {t}: {step_line(ctx, state, t)} stats={rounded(stats)}")
        finish_task(ctx, "seq-ln", t, bank, state)
    summary = incremental_summary(ctx, state["preds"], None)
    return MethodResult("seq-ln", summary, {"train_stats": state["stats"]})


def run_joint_ln(ctx: RunContext) -> MethodResult:
    """Upper bound: one adapter and one head tuned on all tasks' data at once (all classes); final accuracy only."""
    cfg, stream = ctx.config, ctx.stream
    last = stream.num_tasks - 1
    bank, start, state = shared_bank(ctx, "joint-ln")
    if start == 0:
        generator = seed_task(cfg, 0, 3)
        rows = stream.indices("train", last, seen=True)
        with ctx.timed("joint-ln", 0, "stage1_s"):
            stats = train_task_lns(bank, last, ctx, generator, bank.seen_classes(), rows=rows, adapter_task=0)
        with ctx.timed("joint-ln", 0, "eval_s"):
            pred = evaluate(bank, last, ctx, bank.seen_classes(), shared_adapter=True).pred_seen
        state = {"preds": pred.tolist(), "stats": [{"stage1": stats}]}
        finish_task(ctx, "joint-ln", last, bank, state)
    rows = stream.indices("test", last, seen=True)
    pred, labels, tasks = np.asarray(state["preds"]), stream.test_labels[rows], stream.task_of("test")[rows]
    per_task = [float(np.mean(pred[tasks == t] == labels[tasks == t])) for t in range(stream.num_tasks)]
    summary = {
        "num_tasks": stream.num_tasks,
        "final_avg_acc": float(np.mean(per_task)),
        "final_avg_acc_sample": float(np.mean(pred == labels)),
        "acc_final_per_task": per_task,
        "n_test": [int(np.sum(tasks == t)) for t in range(stream.num_tasks)],
        "task_id_acc": None,
    }
    ctx.log(f"[joint-ln] final acc = {summary['final_avg_acc']:.4f}")
    return MethodResult("joint-ln", summary, {"upper_bound": True, "train_stats": state["stats"]})
