# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The methods lntune is compared with, built one way wherever they are measured (GLUE recipe, benchmarks).

Each builder takes a sequence classifier (with its task head) and returns the model to train, with exactly the
parameters to train left with `requires_grad=True`; the new task head (see `lntune.assets.HEAD_NAMES`) always trains.
"""

from __future__ import annotations

from peft import LNTuningConfig, LoraConfig, get_peft_model
from torch import nn

from .assets import HEAD_NAMES
from .norms import find_norms

LORA_TARGETS = ["query", "value"]  # the attention projections the LoRA paper adapts (BERT/RoBERTa names)


def is_head(name: str) -> bool:
    """Whether parameter `name` belongs to a task head (a dotted component named like one of HEAD_NAMES)."""
    return any(part in HEAD_NAMES for part in name.split("."))


def full(model: nn.Module) -> nn.Module:
    """Full fine-tuning: every parameter trains."""
    model.requires_grad_(True)
    return model


def bitfit(model: nn.Module) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): only the bias terms train, plus the task head."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith("bias") or is_head(name))
    return model


def ln_floor(model: nn.Module) -> nn.Module:
    """The cost floor of any LN method: the plain model with only its norm parameters and the head trainable."""
    norm_params = {id(p) for info in find_norms(model) for p in info.module.parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in norm_params or is_head(name))
    return model


def lora(
    model: nn.Module,
    r: int = 8,
    alpha: int | None = None,
    dropout: float = 0.1,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """peft LoRA on the attention query/value projections (peft's GLUE example settings: r=8, alpha=2r=16), plus the
    head and any `modules_to_save` (trained and saved whole)."""
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=LORA_TARGETS,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def peft_ln(model: nn.Module) -> nn.Module:
    """peft's own LN tuning (`LNTuningConfig`, a trained copy of each norm), plus the head.

    peft's target table is keyed by `model_type` and has no entry for e.g. BERT, so the norms `lntune.find_norms`
    finds are passed as `target_modules` there: both methods then tune exactly the same norms.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING as TABLE

    target_modules = None
    if getattr(getattr(model, "config", None), "model_type", None) not in TABLE:
        target_modules = [info.name for info in find_norms(model)]
    return get_peft_model(model, LNTuningConfig(task_type="SEQ_CLS", target_modules=target_modules))
