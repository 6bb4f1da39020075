# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Shared by the continual-learning tests: tiny random backbones with their batches, banks with distinct task LNs,
and recipes/continual/run.py with its data, argument list and required metrics."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf

from lntune.continual import LNBank
from lntune.continual.backbone import HFTextEncoder, HFVisionEncoder, TimmVisionEncoder

from ..models import MODELS, SHARED_DATA, TINY_SIZES, quiet_seeded_eval, timm_vit_tiny

RECIPE_SCRIPT = Path(__file__).resolve().parents[2] / "recipes" / "continual" / "run.py"
CIFAR10_DIR = SHARED_DATA / "cifar10"
REQUIRED_METRICS = ("final_avg_acc", "avg_inc_acc", "forgetting", "acc_matrix", "task_id_acc", "class_order", "split")


def load_recipe():
    spec = importlib.util.spec_from_file_location("continual_run", RECIPE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_argv(tiny_vit: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(CIFAR10_DIR), "--model", str(tiny_vit), "--tasks", "2", "--max_train_per_class", "4",
        "--max_test_per_class", "2", "--epochs", "1", "--batch_size", "8", "--rectify_epochs", "2",
        "--output_dir", str(out), "--no_progress", *extra,
    ]  # fmt: skip


def pixel_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}


def token_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[0, 5:] = 0  # one padded row, so mean pooling must respect the mask
    return {"input_ids": torch.randint(3, 100, (n, 7), generator=g), "attention_mask": mask}


# (backbone id, builder, batch maker, encoder class)
BACKBONES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., dict], type]] = {
    "hf_vit": (MODELS["vit"].build, pixel_batch, HFVisionEncoder),
    "timm_vit": (quiet_seeded_eval(timm_vit_tiny), pixel_batch, TimmVisionEncoder),
    "bert": (
        quiet_seeded_eval(lambda: tf.BertModel(tf.BertConfig(hidden_size=32, vocab_size=100, **TINY_SIZES))),
        token_batch,
        HFTextEncoder,
    ),
}


def randomize(bank: LNBank, t: int, seed: int) -> None:
    """Give task `t` visibly different LN deltas (zero deltas would make every routing equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.adapter_parameters(t):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def two_task_lda_bank() -> tuple[LNBank, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    bank = LNBank(MODELS["vit"].build(), num_classes=4, router="lda")
    inputs = {"pixel_values": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for t, classes in enumerate(([0, 1], [2, 3])):
        bank.add_task(classes)
        with torch.no_grad():
            for p in bank.adapter_parameters(t):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(t + 1)) * 0.5)
    queries = bank.query(**inputs)
    bank.fit_router(queries, labels)
    return bank, inputs
