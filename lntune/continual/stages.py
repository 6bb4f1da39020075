# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The stages of one task (De Min et al. 2023, the official code's order) and evaluation.

1. **keys** (two-pass bank): learn task ``t``'s keys by maximising their mean cosine similarity with the frozen
   queries of task ``t``'s samples (:func:`learn_keys`);
2. **stage 1**: train task ``t``'s LN deltas and a classifier on logits restricted to task ``t``'s classes. With
   classifier rectification on (the official ``--unbiased``), this trains the *auxiliary* head (their ``fake_head``)
   and leaves the inference head alone (:func:`train_task_lns`); the single-pass bank adds its layer-key loss here
   (and may refine its layer keys afterwards, :func:`refine_layer_keys`);
3. **stage 2** (classifier rectification): compute once, under no_grad, the features that inference would produce
   for task ``t``'s training samples (selected task's LN values), then train only the inference head on them
   (:func:`rectify_classifier`);
4. **evaluate** on the test samples of every task seen so far (:func:`evaluate`).

Keys, layer keys and stage 2 train small tensors on precomputed inputs with one helper, :func:`minibatch_adam`.
Each stage leaves the bank frozen and in eval mode, and with several processes broadcasts what it trained from rank 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm

from .bank import LNBank
from .context import RunContext
from .distributed import all_reduce_grads, all_reduce_sum, broadcast_params, gather_rows, positions, train_batches
from .late_select import LateSelectionLNBank
from .single_pass import SinglePassLNBank
from .stream import make_loader

__all__ = [
    "Evaluation",
    "evaluate",
    "fit_router",
    "lda_head_scores",
    "learn_keys",
    "minibatch_adam",
    "rectify_classifier",
    "refine_layer_keys",
    "restricted_ce",
    "selection_features",
    "train_task_lns",
]

Step = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def enable_grads(params: list[nn.Parameter]) -> None:
    """Make `params` trainable (every stage starts from a frozen bank)."""
    for p in params:
        p.requires_grad_(True)


def finish_stage(bank: LNBank) -> None:
    """Leave the bank as every stage must: eval mode, nothing trainable."""
    bank.eval()
    bank.freeze()


def restricted_ce(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[int], smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the columns `classes` only (the official code's logit mask, exact also with label
    smoothing, which would put mass on `-inf` logits otherwise). Returns (loss, accuracy)."""
    cls = torch.tensor(classes, device=logits.device)
    position = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long, device=logits.device)
    position[cls] = torch.arange(len(classes), device=logits.device)
    target = position[labels]
    if (target < 0).any():
        raise ValueError(f"A label lies outside the classes the logits are restricted to ({classes[:10]} ...).")
    sub = logits.float().index_select(1, cls)
    loss = F.cross_entropy(sub, target, label_smoothing=smoothing)
    return loss, (sub.argmax(-1) == target).float().mean()


def minibatch_adam(
    ctx: RunContext, params: list[nn.Parameter], lr: float, epochs: int, n: int, generator: torch.Generator, step: Step
) -> dict[str, float]:
    """Train `params` with Adam at `lr` for `epochs` epochs over `n` precomputed samples in shuffled minibatches of
    `ctx.config.batch_size`, then give every process rank 0's values.

    Each epoch draws `torch.randperm(n, generator=generator)`; `step(batch)` gets a batch's positions (a CPU long
    tensor) and returns its loss and batch-mean statistics (e.g. `{"acc": ...}`). Returns the last epoch's
    sample-weighted means of the loss and of every statistic (empty with `epochs=0`).
    """
    enable_grads(params)
    opt = torch.optim.Adam(params, lr=lr)
    size = ctx.config.batch_size
    stats: dict[str, float] = {}
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        sums: dict[str, float] = {}
        for start in range(0, n, size):
            batch = order[start : start + size]
            loss, extra = step(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss, **extra}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
        stats = {k: v / n for k, v in sums.items()}
    broadcast_params(ctx, params)  # every process ran the same steps on the same inputs: guard against drift
    return stats


def fit_router(bank: LNBank, t: int, ctx: RunContext) -> None:
    """Add the frozen features of task `t`'s training samples to the bank's LDA statistics (`router="lda"`; nothing
    with key routing): the cached queries, or for a late-selection bank its layer-`L` features (a frozen pass that
    stops at block `L`). Exact and order-free: every process adds the same gathered features."""
    rows = ctx.stream.indices("train", t)
    labels = torch.from_numpy(ctx.stream.train_labels[rows])
    if isinstance(bank, LateSelectionLNBank):
        bank.fit_router(selection_features(bank, ctx, "train", rows), labels)
    else:
        bank.fit_router(ctx.cache.get("train", rows), labels)


@torch.no_grad()
def selection_features(bank: LateSelectionLNBank, ctx: RunContext, which: str, rows: np.ndarray) -> torch.Tensor:
    """Frozen layer-`L` features of `rows` (several processes share the batches and all get every row)."""
    size = ctx.config.eval_batch_size
    mine = rows[positions(len(rows), size, ctx.rank, ctx.world)]
    out = [torch.zeros(0, bank.query_dim, device=ctx.device)]
    for _, inputs in make_loader(ctx.stream, which, mine, size, ctx.config.num_workers):
        with ctx.autocast():
            out.append(bank.selection_features(**send_to_device(inputs, ctx.device)).float())
    return gather_rows(ctx, {"features": torch.cat(out)}, len(rows), size)["features"]


def learn_keys(bank: LNBank, t: int, ctx: RunContext, generator: torch.Generator) -> float:
    """Stage 1a: learn task `t`'s keys from the (cached) frozen queries of its training samples.

    Adam on the negative mean cosine similarity, `key_epochs` epochs of shuffled batches. Returns the final mean
    cosine similarity between the queries and their key.
    """
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    labels = torch.from_numpy(ctx.stream.train_labels[rows])

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch.numpy()
        return bank.key_loss(ctx.cache.get("train", rows[b]), t, labels[b]), {}

    minibatch_adam(
        ctx, bank.key_parameters(t), cfg.resolved_key_lr, cfg.resolved_key_epochs, len(rows), generator, step
    )
    with torch.no_grad():
        sim = -float(bank.key_loss(ctx.cache.get("train", rows), t, labels))
    finish_stage(bank)
    return sim


def train_task_lns(
    bank: LNBank,
    t: int,
    ctx: RunContext,
    generator: torch.Generator,
    classes: list[int],
    rows: Optional[np.ndarray] = None,
    adapter_task: Optional[int] = None,
    aux_head: bool = False,
) -> dict[str, float]:
    """Stage 1: train the LN deltas of `adapter_task` (default `t`) and the head rows of `classes` with the
    cross-entropy restricted to `classes`, on `rows` (default: task `t`'s training samples).

    `aux_head=True` trains the auxiliary head (classifier rectification retrains the real one in stage 2). A bank
    whose `task_features` returns a key loss (single-pass) adds it, so its layer keys learn here too (at `key_lr`).
    Several processes split every batch and sum their gradients, each weighted by its share of the batch.
    """
    cfg = ctx.config
    adapter_task = t if adapter_task is None else adapter_task
    rows = ctx.stream.indices("train", t) if rows is None else rows
    head = bank.aux_classifier if aux_head else bank.classifier
    groups = [{"params": bank.adapter_parameters(adapter_task) + list(head.parameters()), "lr": cfg.stage1_lr}]
    if isinstance(bank, SinglePassLNBank):  # its layer keys learn here, at the key learning rate
        groups.append({"params": bank.key_parameters(adapter_task), "lr": cfg.resolved_key_lr})
    bank.train()
    params = [p for g in groups for p in g["params"]]
    enable_grads(params)
    opt = torch.optim.Adam(groups)
    labels_all = torch.from_numpy(ctx.stream.train_labels)
    stats = {"loss": float("nan"), "acc": float("nan")}
    for epoch in range(cfg.epochs):
        total, acc, n = 0.0, 0.0, 0
        for size, idx, inputs in train_batches(
            ctx, rows, generator, f"task {t} stage 1 epoch {epoch + 1}/{cfg.epochs}"
        ):
            opt.zero_grad(set_to_none=True)
            if idx is not None:
                labels = labels_all[idx].to(ctx.device)
                with ctx.autocast():
                    features, extra = bank.task_features(adapter_task, **send_to_device(inputs, ctx.device))
                loss, batch_acc = restricted_ce(head(features.float()), labels, classes, cfg.label_smoothing)
                if extra is not None:
                    loss = loss + extra
                # both terms are batch means: this process's share of the batch mean is its mean times its share
                (loss if ctx.world == 1 else loss * (len(idx) / size)).backward()
                total += float(loss.detach()) * len(idx)
                acc += float(batch_acc) * len(idx)
                n += len(idx)
            if ctx.world > 1:
                all_reduce_grads(ctx, params)
            opt.step()
        total, acc, n = all_reduce_sum(ctx, [total, acc, n])
        stats = {"loss": total / max(n, 1), "acc": acc / max(n, 1)}
    broadcast_params(ctx, params)
    finish_stage(bank)
    return stats


def refine_layer_keys(bank: SinglePassLNBank, t: int, ctx: RunContext, generator: torch.Generator) -> float:
    """Single-pass bank: learn task `t`'s layer keys to convergence on the [CLS] inputs of every norm when its
    training samples run with task `t`'s final LN values (collected once, no grad). Returns the final mean cosine."""
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    bank.eval()
    collected: dict[int, list[torch.Tensor]] = {}
    mine = rows[positions(len(rows), cfg.eval_batch_size, ctx.rank, ctx.world)]
    for _, inputs in make_loader(ctx.stream, "train", mine, cfg.eval_batch_size, cfg.num_workers):
        with ctx.autocast():
            for i, tokens in bank.layer_inputs(t, **send_to_device(inputs, ctx.device)).items():
                collected.setdefault(i, []).append(tokens.float())
    tokens = gather_rows(ctx, {i: torch.cat(v) for i, v in collected.items()}, len(rows), cfg.eval_batch_size)

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch.to(ctx.device)
        return bank.layer_key_loss(t, {i: v[b] for i, v in tokens.items()}), {}

    minibatch_adam(ctx, bank.key_parameters(t), cfg.resolved_key_lr, cfg.layer_key_epochs, len(rows), generator, step)
    with torch.no_grad():
        sim = -float(bank.layer_key_loss(t, tokens))
    finish_stage(bank)
    return sim


@torch.no_grad()
def _inference_features(
    bank: LNBank, ctx: RunContext, which: str, rows: np.ndarray, upto: int, shared_adapter: bool = False
) -> dict[str, torch.Tensor]:
    """`features` (and `tasks`, the selected tasks, and `log_posterior`, the LDA router's class log-posterior, where
    the bank has them) of `rows` with the LN values inference picks among tasks `0..upto`; several processes share the
    batches and all get every row."""
    bank.eval()
    size = ctx.config.eval_batch_size
    mine = positions(len(rows), size, ctx.rank, ctx.world)
    queries = None
    if not shared_adapter and not bank.one_pass:  # outside the loop: may involve every process
        queries = ctx.cache.get(which, rows)[torch.from_numpy(mine).to(ctx.device)]
    local: dict[str, list[torch.Tensor]] = {"features": [torch.zeros(0, bank.dim, device=ctx.device)]}
    done = 0
    loader = make_loader(ctx.stream, which, rows[mine], size, ctx.config.num_workers)
    for idx, inputs in tqdm(loader, desc=f"{which} features", leave=False, disable=not ctx.progress):
        inputs = send_to_device(inputs, ctx.device)
        with ctx.autocast():
            if shared_adapter:
                local["features"].append(bank.task_features(0, **inputs)[0].float())
                continue
            if bank.one_pass:
                f, task_ids = bank.infer(upto=upto, **inputs)
                batch_queries = getattr(bank, "last_queries", None)
            else:
                batch_queries = queries[done : done + len(idx)]
                f, task_ids = bank.infer(queries=batch_queries, upto=upto, topk=ctx.config.router_topk, **inputs)
        done += len(idx)
        local["features"].append(f.float())
        local.setdefault("tasks", []).append(task_ids.cpu())
        if bank.statistics is not None:
            local.setdefault("log_posterior", []).append(bank.class_log_posterior(batch_queries.float(), upto))
    out = gather_rows(ctx, {k: torch.cat(v) for k, v in local.items()}, len(rows), size)
    if "tasks" in out:
        out["tasks"] = out["tasks"].cpu()
    return out


def rectify_classifier(bank: LNBank, t: int, ctx: RunContext, generator: torch.Generator) -> dict[str, float]:
    """Stage 2: retrain only `bank.classifier` on the features inference would give task `t`'s training samples.

    The features are computed once (no_grad, routed pass); the logits cover task `t`'s classes (`rectify_mask=
    "task"`, the official code) or every seen class (`"seen"`).
    """
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    features = _inference_features(bank, ctx, "train", rows, upto=t)["features"]
    labels = torch.from_numpy(ctx.stream.train_labels[rows]).to(ctx.device)
    classes = ctx.stream.task_classes(t) if cfg.rectify_mask == "task" else bank.seen_classes(t)

    def step(batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch.to(ctx.device)
        loss, acc = restricted_ce(bank.classifier(features[b]), labels[b], classes, cfg.label_smoothing)
        return loss, {"acc": acc}

    params = list(bank.classifier.parameters())
    stats = minibatch_adam(ctx, params, cfg.rectify_lr, cfg.rectify_epochs, len(rows), generator, step)
    finish_stage(bank)
    return {"loss": float("nan"), "acc": float("nan")} | stats


def lda_head_scores(
    bank: LNBank, features: torch.Tensor, log_posterior: torch.Tensor, task_ids: torch.Tensor
) -> torch.Tensor:
    """The `"lda+head"` rule's scores: within each row's selected task, the head's log-softmax over the task's
    classes plus the LDA router's class log-posterior renormalised to them (a product of experts), `-inf` elsewhere.
    The head sees adapted features, the router frozen ones, and their errors differ, so the product beats either
    alone (recipes/continual/README.md)."""
    head = bank.logits(features, task_ids=task_ids).log_softmax(dim=-1)
    keep = torch.isfinite(head)
    return head + log_posterior.to(head.device).masked_fill(~keep, float("-inf")).log_softmax(dim=-1)


@dataclass
class Evaluation:
    """Predictions on the test samples of tasks `0..t` (row order): over all seen classes (`pred_seen`), within
    the selected task's classes (`pred_task`, None without selection), within it by head x LDA router
    (`pred_lda_head`, None without an LDA router) and the selected tasks (`task_pred`)."""

    pred_seen: np.ndarray
    pred_task: Optional[np.ndarray]
    task_pred: Optional[np.ndarray]
    pred_lda_head: Optional[np.ndarray] = None

    def rules(self) -> list[str]:
        """The prediction rules this evaluation holds (see `ContinualConfig.prediction`)."""
        extra = [r for r, p in (("task", self.pred_task), ("lda+head", self.pred_lda_head)) if p is not None]
        return ["seen", *extra]

    def pred(self, prediction: str) -> np.ndarray:
        if prediction == "lda+head" and self.pred_lda_head is not None:
            return self.pred_lda_head
        return self.pred_task if (prediction == "task" and self.pred_task is not None) else self.pred_seen


def evaluate(bank: LNBank, t: int, ctx: RunContext, classes: list[int], shared_adapter: bool = False) -> Evaluation:
    """Evaluate on the test samples of tasks `0..t`; `classes` are the seen classes (incremental labels)."""
    rows = ctx.stream.indices("test", t, seen=True)
    out = _inference_features(bank, ctx, "test", rows, upto=t, shared_adapter=shared_adapter)
    features, tasks = out["features"], out.get("tasks")
    with torch.no_grad():
        logits = bank.classifier(features)
        seen = logits.index_select(1, torch.tensor(classes, device=features.device))
        pred_seen = np.asarray(classes)[seen.argmax(-1).cpu().numpy()]
        pred_task = pred_lda_head = None
        if tasks is not None:
            pred_task = bank.logits(features, upto=t, task_ids=tasks).argmax(-1).cpu().numpy()
        if "log_posterior" in out:
            scores = lda_head_scores(bank, features, out["log_posterior"], tasks)
            pred_lda_head = scores.argmax(-1).cpu().numpy()
    return Evaluation(pred_seen, pred_task, None if tasks is None else tasks.numpy(), pred_lda_head)
