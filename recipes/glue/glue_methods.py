# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The GLUE recipe's methods: how each one builds the model to train, and its default schedule.

``run_glue.py --method M`` looks ``M`` up in ``METHODS``; ``sweep.py`` and ``search.py`` read the same registry. The
builders of the methods lntune is compared with live in ``lntune.comparisons`` (shared with ``bench/step.py``); the
ones here add what needs the recipe's arguments (the Fisher subset scores the training data first).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from peft import get_peft_model
from torch import nn
from torch.utils.data import DataLoader

import lntune
from lntune import comparisons
from lntune.fisher import fisher_scores, select_by_fisher, warm_up_head
from lntune.norms import find_norms

logger = get_logger(__name__)

# Each builder takes the base model (with its head) and returns the model to train, with exactly the parameters to
# train left with requires_grad=True.


@dataclass
class BuildContext:
    """What a method builder may need besides the model: the args, the accelerator and the (unprepared) train data."""

    args: argparse.Namespace
    accelerator: Accelerator
    train_dataset: datasets.Dataset
    collator: Callable
    info: dict[str, Any]  # builders put extra results here (e.g. Fisher timing); they end up in all_results.json
    lora_rank: int | None = None  # --lora_rank, else the method's default (methods with a LoRA part only)


def build_lntune(model: nn.Module, ctx: BuildContext, preset: str | None = None) -> nn.Module:
    """LayerNorm tuning: train the gain and bias deltas of the norms (all, or a preset), plus the head."""
    return get_peft_model(model, lntune.LNTuneConfig(task_type="SEQ_CLS", preset=preset))


def build_lntune_output(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """LayerNorm tuning of the output (feed-forward) LayerNorms only, plus the head."""
    return build_lntune(model, ctx, preset="output")


def _warm_up_head(model: nn.Module, ctx: BuildContext, loader: DataLoader) -> None:
    """``--fisher_warmup_steps`` head-only steps, so a subset is chosen (and training starts) from a head that has seen
    the task."""
    args, accelerator = ctx.args, ctx.accelerator
    if args.fisher_warmup_steps > 0:
        # score through a head that has seen the task, not a random one (every process takes the same steps; DDP
        # then broadcasts rank 0's weights anyway); the warmed-up head is where training starts
        stats = warm_up_head(
            model,
            loader,
            steps=args.fisher_warmup_steps,
            learning_rate=args.learning_rate,
            progress=accelerator.is_local_main_process,
        )
        ctx.info["fisher_warmup"] = stats
        logger.info(
            f"head warm-up: {stats['steps']:.0f} steps, loss {stats['first_loss']:.4f} -> {stats['last_loss']:.4f}"
        )


def _record_selection(ctx: BuildContext, mask: dict, roles: dict[str, str], total: int, kind: str) -> None:
    """Put the size of a selection, and where it fell (embedding / attention / output norms), into the results."""
    ctx.info["fisher_selected"] = sum(len(idx) for per in mask.values() for idx in per.values())
    ctx.info["fisher_total"] = total
    by_role: dict[str, int] = {}
    for name, per in mask.items():
        role = roles.get(name, "other")
        by_role[role] = by_role.get(role, 0) + sum(len(idx) for idx in per.values())
    ctx.info["fisher_selected_by_role"] = by_role
    logger.info(
        f"{kind} selection: {ctx.info['fisher_selected']} of {total} norm scalars "
        f"({ctx.args.fisher_fraction:.0%} budget, {ctx.info['fisher_time_s']:.1f}s); by role: {by_role}"
    )


def build_lntune_fisher(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """LayerNorm tuning of the norm scalars with the largest diagonal Fisher on the training set, plus the head."""
    args, accelerator = ctx.args, ctx.accelerator
    # fixed order, the same on every process: fisher_scores shards the batches itself and all-reduces the sums
    loader = DataLoader(ctx.train_dataset, batch_size=args.per_device_train_batch_size, collate_fn=ctx.collator)
    model.to(accelerator.device)
    start = time.perf_counter()
    _warm_up_head(model, ctx, loader)
    scores = fisher_scores(
        model,
        loader,
        num_samples=args.fisher_samples,
        kind="empirical",
        accelerator=accelerator,
        progress=accelerator.is_local_main_process,
        seed=args.seed,
    )
    mask = select_by_fisher(scores, fraction=args.fisher_fraction, normalize=args.fisher_normalize)
    ctx.info["fisher_time_s"] = time.perf_counter() - start
    ctx.info["fisher_num_samples"] = scores.num_samples
    _record_selection(ctx, mask, scores.roles, scores.num_scalars, kind=f"Fisher ({scores.num_samples} samples)")
    return get_peft_model(model, lntune.LNTuneConfig(task_type="SEQ_CLS", mask=mask))


def build_lntune_random(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """The control for ``lntune-fisher``: a uniformly random subset of the norm scalars of the same size (seeded by
    ``--seed``), after the same head warm-up, plus the head. What the Fisher scores add is the difference."""
    args, accelerator = ctx.args, ctx.accelerator
    loader = DataLoader(ctx.train_dataset, batch_size=args.per_device_train_batch_size, collate_fn=ctx.collator)
    model.to(accelerator.device)
    start = time.perf_counter()
    _warm_up_head(model, ctx, loader)
    generator = torch.Generator().manual_seed(args.seed)
    norms = find_norms(model)
    scores = {n.name: {p: torch.rand(shape, generator=generator) for p, shape in n.shapes.items()} for n in norms}
    mask = select_by_fisher(scores, fraction=args.fisher_fraction)
    ctx.info["fisher_time_s"] = time.perf_counter() - start
    total = sum(t.numel() for per in scores.values() for t in per.values())
    _record_selection(ctx, mask, {n.name: n.role for n in norms}, total, kind="random")
    return get_peft_model(model, lntune.LNTuneConfig(task_type="SEQ_CLS", mask=mask))


def build_full(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """Full fine-tuning: every parameter trains."""
    return comparisons.full(model)


def build_bitfit(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): only the bias terms train, plus the (new) classification head."""
    return comparisons.bitfit(model)


def build_lora(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """LoRA r=8 (or ``--lora_rank``), alpha=2r, dropout 0.1 on the attention query/value projections (peft's GLUE
    example: r=8, alpha=16), plus the head."""
    return comparisons.lora(model, r=ctx.lora_rank)


def build_lntune_lora(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """Norms plus a rank-2 (or ``--lora_rank``) LoRA on the attention query/value projections, plus the head: the
    candidate design for tasks where norms alone trail full fine-tuning (CoLA: the attention maps have to change,
    which norms and biases cannot do). peft's LoRA with every norm ``lntune.find_norms`` finds as a trained, saved
    module (``modules_to_save``): about a quarter of LoRA r=8's parameters on top of the norms'."""
    return comparisons.lora(model, r=ctx.lora_rank, modules_to_save=[info.name for info in find_norms(model)])


def build_peft_ln(model: nn.Module, ctx: BuildContext) -> nn.Module:
    """peft's own LN tuning (``LNTuningConfig``), which trains a copy of each targeted norm, plus the head."""
    return comparisons.peft_ln(model)


@dataclass(frozen=True)
class Method:
    """One entry of the method registry: how to build the trainable model, and its default schedule.

    The defaults are what `python run_glue.py --task T --method M` uses with no learning-rate or epoch flags; they
    come from the search recorded in `results/glue_search_minilm.md` (see recipes/glue/README.md).
    """

    build: Callable[[nn.Module, BuildContext], nn.Module]
    learning_rate: float
    is_peft: bool
    num_train_epochs: int = 3
    warmup_ratio: float = 0.06
    # `--pooling auto` on a sentence-pair task of a mean-pooling checkpoint: encode each sentence alone ("pair") rather
    # than mean-pool the joint pair
    pair_pooling: bool = False
    # the default rank of the method's LoRA part (``--lora_rank`` overrides it); None: the method has none
    lora_rank: int | None = None


# Defaults (see recipes/glue/README.md, "Defaults"). Full fine-tuning: lr 5e-5 for 4 epochs, the best mean held-out
# score of `search.py` on SST-2 and MRPC training data (results/glue_search_minilm.md; of 2e-5, 5e-5, 1e-4). lntune: lr
# 3e-3 for 8 epochs, the best mean held-out score on CoLA, SST-2, MRPC and STS-B at 4,000 examples
# (results/glue_search_minilm_4k.md; 3e-3 vs 1e-2 tie on the mean, 67.3 vs 67.2, and at 1e-2 the norms stall on CoLA
# for four epochs: 14.8 MCC vs 17.2, full fine-tuning 18.2). lntune-fisher: lr 1e-2 for 8 epochs, its own search on
# the same four held-out splits (3e-3: 64.1, 1e-2: 65.5, mean last-epoch score; 1e-2 is higher on all four tasks);
# lntune-random, its control, takes the same values. lntune-output and peft-ln take lntune's (not searched
# separately yet). LoRA: lr 2e-3 for 8 epochs, from the same held-out search (2e-3: CoLA 23.0, SST-2 86.0, MRPC 83.9,
# STS-B 84.3; the literature's 5e-4, the LoRA paper's RoBERTa-base GLUE range 4e-4..5e-4, is lower on the two tasks it
# ran, CoLA 15.4 and SST-2 85.5, and at 3 epochs it stays at the majority class on CoLA dev). BitFit: lr 3e-3 for 8
# epochs, from the same held-out protocol on CoLA and SST-2 only (3e-3: CoLA 18.6, SST-2 84.9, mean 51.8; the
# paper's upper end 1e-3: 15.0 and 86.5, mean 50.8; MRPC and STS-B not searched); at its former 1e-3 x 3 epochs it
# stayed near the majority class on CoLA dev (4.6 MCC).
# lntune-lora (norms + rank-2 LoRA on query/value), the candidate design for CoLA: LoRA's held-out CoLA rate 2e-3 and
# lntune's 8 epochs and pooling; not searched (dev: CoLA 3 seeds, the other four tasks seed 0).
# Pooling on sentence-pair tasks of a mean-pooling (bi-encoder) checkpoint: the norm-tuning methods encode each
# sentence alone (lntune.use_pair_pooling), the held-out winner for lntune on RTE (64.3 vs 58.2 with the joint pair),
# STS-B (85.5 vs 83.8) and MRPC (82.7 vs 82.2) in results/glue_search_minilm_4k*.md; the linear probe says why: the
# frozen features of the joint pair carry little of the relation (RTE 55.0 vs 60.8 each alone,
# results/glue_probe_minilm_4k.md). lntune-output, lntune-random and peft-ln follow lntune (same family, not searched
# separately). Full fine-tuning keeps the joint pair: with pair pooling its wide new head needs its own rate (56.8 on
# held-out RTE at 5e-5), and with --head_learning_rate 1e-3 it is level with the joint pair (RTE 63.5 vs 62.7, STS-B
# 84.9 vs 84.7, one seed: within noise). BitFit, which like the norms cannot rewrite a weight, pair-pools too: its
# held-out search at 3e-3 x 8 (results/glue_search_minilm_4k.md) gives STS-B 85.9 vs 84.8 with the joint pair and RTE
# 61.4 vs near chance (best epoch 63.9). LoRA keeps the joint pair (its search ran with it; it can change attention).
METHODS: dict[str, Method] = {
    "lntune": Method(build_lntune, 3e-3, True, num_train_epochs=8, pair_pooling=True),
    "lntune-output": Method(build_lntune_output, 3e-3, True, num_train_epochs=8, pair_pooling=True),
    "lntune-fisher": Method(build_lntune_fisher, 1e-2, True, num_train_epochs=8, pair_pooling=True),
    "lntune-random": Method(build_lntune_random, 1e-2, True, num_train_epochs=8, pair_pooling=True),
    "full": Method(build_full, 5e-5, False, num_train_epochs=4),
    "bitfit": Method(build_bitfit, 3e-3, False, num_train_epochs=8, pair_pooling=True),
    "lora": Method(build_lora, 2e-3, True, num_train_epochs=8, lora_rank=8),
    "lntune-lora": Method(build_lntune_lora, 2e-3, True, num_train_epochs=8, pair_pooling=True, lora_rank=2),
    "peft-ln": Method(build_peft_ln, 3e-3, True, num_train_epochs=8, pair_pooling=True),
}
