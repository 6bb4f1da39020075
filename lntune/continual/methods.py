# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The methods of a run: the two LN banks task after task, the registry :data:`METHODS` and :func:`run_methods`.

Per task, the two-pass bank (``ln-bank``) learns its keys, trains its LNs (stage 1), rectifies its classifier (stage
2) and is evaluated on every task seen so far; the single-pass bank (``ln-bank-1pass``) has no key stage and may
refine its layer keys after stage 1. Baselines are in :mod:`lntune.continual.baselines`. Every method checkpoints
after each task and resumes from its latest checkpoint (:mod:`lntune.continual.protocol`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device

from .bank import KEY_MODES, LNBank
from .baselines import run_joint_ln, run_lda, run_nmc, run_seq_ln
from .config import PREDICTIONS
from .context import RunContext, seed_task
from .distributed import all_reduce_sum, positions
from .late_select import LateSelectionLNBank
from .metrics import task_id_accuracy
from .protocol import (
    HEADLINE,
    MethodResult,
    build_bank,
    finish_task,
    incremental_summary,
    rounded,
    start_method,
    step_line,
)
from .single_pass import SinglePassLNBank
from .stages import (
    evaluate,
    fit_router,
    lda_head_scores,
    learn_keys,
    rectify_classifier,
    refine_layer_keys,
    train_task_lns,
)
from .stream import make_loader

__all__ = [
    "BANK_KINDS",
    "METHODS",
    "new_bank",
    "compare_key_modes",
    "oracle_accuracy",
    "run_bank",
    "run_methods",
    "train_bank_task",
]


def train_bank_task(bank: LNBank, t: int, ctx: RunContext, method: str, generator: torch.Generator) -> dict[str, Any]:
    """Every training stage of task `t` (timed into `ctx.timings`); returns their statistics."""
    cfg, single_pass = ctx.config, isinstance(bank, SinglePassLNBank)
    stats: dict[str, Any] = {}
    if bank.statistics is not None:
        with ctx.timed(method, t, "router_s"):
            fit_router(bank, t, ctx)
    if not bank.one_pass:
        with ctx.timed(method, t, "keys_s"):
            stats["key_sim"] = learn_keys(bank, t, ctx, generator)
    with ctx.timed(method, t, "stage1_s"):
        stats["stage1"] = train_task_lns(bank, t, ctx, generator, ctx.stream.task_classes(t), aux_head=cfg.rectify)
    if single_pass and cfg.layer_key_epochs:
        with ctx.timed(method, t, "layer_keys_s"):
            stats["layer_key_sim"] = refine_layer_keys(bank, t, ctx, generator)
    if cfg.rectify:
        with ctx.timed(method, t, "stage2_s"):
            stats["stage2"] = rectify_classifier(bank, t, ctx, generator)
    return stats


BANK_KINDS = ("two-pass", "layerwise", "late")


def new_bank(ctx: RunContext, kind: str) -> LNBank:
    """A fresh bank of `kind`: the two-pass bank (`cfg.key_mode`, `cfg.router`), the per-layer single-pass bank
    (task keys) or the late-selection one-pass bank (LDA at `cfg.selection_layer`)."""
    cfg = ctx.config
    if kind == "layerwise":
        return build_bank(ctx, SinglePassLNBank, "task", "keys")
    if kind == "late":
        bank = LateSelectionLNBank(
            ctx.make_encoder(),
            num_classes=ctx.stream.split.num_classes,
            selection_layer=cfg.selection_layer,
            seed=cfg.seed,
            shrinkage=cfg.lda_shrinkage,
            query_layers=cfg.query_layers,
        )
        return bank.to(ctx.device)
    return build_bank(ctx, LNBank, cfg.key_mode, cfg.router, cfg.query_layers)


def run_bank(ctx: RunContext, method: str, kind: str) -> MethodResult:
    """Run (or resume) an LN bank (`kind` in :data:`BANK_KINDS`) task after task: train, evaluate on the tasks seen
    so far, checkpoint."""
    cfg, stream = ctx.config, ctx.stream
    other = "task" if cfg.prediction == "seen" else "seen"
    fresh: dict[str, Any] = {"preds": [], "preds_other": [], "task_preds": [], "stats": [], "by_rule": {}}
    bank, start, state = start_method(ctx, method, lambda: new_bank(ctx, kind), fresh)
    for t in range(start, stream.num_tasks):
        generator = seed_task(cfg, t, BANK_KINDS.index(kind))
        bank.add_task(stream.task_classes(t))
        stats = train_bank_task(bank, t, ctx, method, generator)
        with ctx.timed(method, t, "eval_s"):
            ev = evaluate(bank, t, ctx, bank.seen_classes(t))
        state["preds"].append(ev.pred(cfg.prediction).tolist())
        state["preds_other"].append(ev.pred(other).tolist())
        state["task_preds"].append(ev.task_pred.tolist())
        for rule in ev.rules():
            state["by_rule"].setdefault(rule, []).append(ev.pred(rule).tolist())
        state["stats"].append(stats)
        ctx.log(f"[{method}] task {t}: {step_line(ctx, state, t)} stats={rounded(stats)}")
        finish_task(ctx, method, t, bank, state)
    # The headline follows the *current* rule: a run resumed under another `prediction` re-reads that rule's saved
    # predictions (every rule is saved each task), instead of reporting the rule the checkpoints were made under.
    headline = state["by_rule"].get(cfg.prediction, state["preds"])
    summary = incremental_summary(ctx, headline, state["task_preds"])
    alternative = incremental_summary(ctx, state["by_rule"].get(other, state["preds_other"]), None)
    extras: dict[str, Any] = {
        "key_mode": bank.key_mode,
        "prediction": cfg.prediction,
        "other_prediction": {"prediction": other, **{k: alternative[k] for k in HEADLINE}},
        "train_stats": state["stats"],
        "predictions": {
            rule: {k: incremental_summary(ctx, preds, None)[k] for k in HEADLINE}
            for rule, preds in state["by_rule"].items()
            if rule in PREDICTIONS
        },
    }
    if kind == "two-pass":
        extras.update(router=bank.router, router_topk=cfg.router_topk, query_layers=bank.query_layers)
    if kind == "late":
        extras.update(
            router="lda",
            selection_layer=bank.selection_layer,
            adapted_norms=len(bank.late_norms),
            query_layers=bank.query_layers,
        )
    if kind == "layerwise":
        extras["task_id_source"] = "the last norm's per-layer selection"
    elif cfg.oracle_eval:
        extras["final_acc_oracle_task"] = oracle_accuracy(bank, ctx)
    return MethodResult(method, summary, extras)


@torch.no_grad()
def oracle_accuracy(bank: LNBank, ctx: RunContext) -> float:
    """Final accuracy on all test samples when each runs with its *true* task's LN values (routing upper bound),
    under the configured prediction rule (`"task"`: argmax within the true task's classes; `"lda+head"`: within
    them, head x LDA router posterior, the router reading the frozen query or layer-`L` feature)."""
    stream, rule = ctx.stream, ctx.config.prediction
    rows = stream.indices("test", stream.num_tasks - 1, seen=True)
    true_tasks = torch.from_numpy(stream.task_of("test"))
    correct = 0
    bank.eval()
    size = ctx.config.eval_batch_size
    mine = rows[positions(len(rows), size, ctx.rank, ctx.world)]
    lda_head = rule == "lda+head" and bank.statistics is not None
    if lda_head and not bank.one_pass:
        ctx.cache.get("test", rows[:1])  # every process computes its share of the test queries here
    for idx, inputs in make_loader(stream, "test", mine, size, ctx.config.num_workers):
        inputs = send_to_device(inputs, ctx.device)
        with ctx.autocast():
            f = bank.routed_features(true_tasks[idx], **inputs).float()
        gate = true_tasks[idx] if rule != "seen" else None
        if lda_head:
            q = bank.selection_features(**inputs) if bank.one_pass else ctx.cache.get("test", idx.numpy())
            scores = lda_head_scores(bank, f, bank.class_log_posterior(q.float()), gate)
        else:
            scores = bank.logits(f, task_ids=gate)
        pred = scores.argmax(-1).cpu().numpy()
        correct += int(np.sum(pred == stream.test_labels[idx.numpy()]))
    return int(round(all_reduce_sum(ctx, [correct])[0])) / len(rows)


def run_ln_bank(ctx: RunContext) -> MethodResult:
    """The two-pass bank (the paper): keys on frozen queries, per-task LNs, classifier rectification."""
    return run_bank(ctx, "ln-bank", "two-pass")


def run_ln_bank_1pass(ctx: RunContext) -> MethodResult:
    """The one-pass bank: frozen blocks up to `selection_layer`, LDA task choice there, task LNs after it."""
    return run_bank(ctx, "ln-bank-1pass", "late")


def run_ln_bank_layerwise(ctx: RunContext) -> MethodResult:
    """The official single-stage bank: per-layer keys on each norm's [CLS] input, one forward pass at inference."""
    return run_bank(ctx, "ln-bank-layerwise", "layerwise")


METHODS: dict[str, Callable[[RunContext], MethodResult]] = {
    "ln-bank": run_ln_bank,
    "ln-bank-1pass": run_ln_bank_1pass,
    "ln-bank-layerwise": run_ln_bank_layerwise,
    "nmc": run_nmc,
    "lda": run_lda,
    "seq-ln": run_seq_ln,
    "joint-ln": run_joint_ln,
}


def compare_key_modes(ctx: RunContext) -> dict[str, list[float]]:
    """Task-id accuracy per step of both key modes (`"task"`, `"class"`) on the cached test queries: key learning
    exactly as in the bank's stage 1a, no LN training needed (selection only reads frozen queries)."""
    stream, cfg = ctx.stream, ctx.config
    out: dict[str, list[float]] = {}
    encoder = ctx.make_encoder()
    for mode in KEY_MODES:
        bank = LNBank(
            copy.deepcopy(encoder),
            num_classes=stream.split.num_classes,
            key_mode=mode,
            seed=cfg.seed,
            query_layers=cfg.query_layers,
        )
        bank.to(ctx.device)
        out[mode] = []
        for t in range(stream.num_tasks):
            generator = seed_task(cfg, t, 0)
            bank.add_task(stream.task_classes(t))
            learn_keys(bank, t, ctx, generator)
            rows = stream.indices("test", t, seen=True)
            pred = bank.select(ctx.cache.get("test", rows), upto=t).cpu().numpy()
            out[mode].append(task_id_accuracy(pred, stream.task_of("test")[rows]))
    return out


def run_methods(ctx: RunContext, methods: Sequence[str]) -> dict[str, MethodResult]:
    """Run `methods` (names in :data:`METHODS`) one after the other, sharing the query cache."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {sorted(METHODS)}.")
    results = {}
    for m in methods:
        tic = time.perf_counter()
        results[m] = METHODS[m](ctx)
        ctx.timings.setdefault(m, {})["total_s"] = round(time.perf_counter() - tic, 3)
    return results
