# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Tasks and per-sample log-likelihoods: the batched one the estimator differentiates, the plain one of the
batch-size-1 reference, and the seeded label draws of ``kind="true"`` they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lntune.fisher.batches import IGNORE_INDEX, attention_mask_of, base_of, model_task

KINDS = ("empirical", "true")

TASKS = (
    "sequence_classification",
    "image_classification",
    "regression",
    "multi_label_classification",
    "token_classification",
    "causal_lm",
    "seq2seq_lm",
)


def detect_task(model: nn.Module, inputs: Any, labels: torch.Tensor | None, logits: torch.Tensor) -> str:
    """Task from the model class and config, then from the shapes of labels and logits (transformers' rules)."""
    known = model_task(model)
    if known is not None:
        return known
    base = base_of(model)
    cls_name = type(base).__name__
    problem = getattr(getattr(base, "config", None), "problem_type", None)
    if problem == "regression":
        return "regression"
    if problem == "multi_label_classification":
        return "multi_label_classification"
    if logits.dim() == 2:
        if logits.shape[-1] == 1:
            return "regression"
        if labels is None or not labels.is_floating_point():
            is_image = isinstance(inputs, Mapping) and "pixel_values" in inputs
            return "image_classification" if is_image else "sequence_classification"
        return "multi_label_classification"
    if logits.dim() == 3:
        return "token_classification"
    raise ValueError(
        f"fisher_scores: cannot tell the task of {cls_name} from logits of shape {tuple(logits.shape)}; "
        f"pass task= one of {TASKS}"
    )


def _sample_seed(seed: int, index: int) -> int:
    """Seed of the label draw for the sample at global position ``index``: the same draw whatever the batching."""
    return (seed * 6364136223846793005 + index * 1442695040888963407 + 1) % (2**63 - 1)


def _uniforms(seed: int, index: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_sample_seed(seed, index))
    return torch.rand(n, generator=gen, dtype=torch.float64)


def _normals(seed: int, index: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_sample_seed(seed, index))
    return torch.randn(n, generator=gen, dtype=torch.float64)


def _sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``softmax(logits)`` (rows) with the given uniforms (one per row)."""
    cdf = torch.softmax(logits.detach().double(), dim=-1).cumsum(-1)
    target = (u.to(cdf.device) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _token_targets(task: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any) -> tuple:
    """(logits [B, T, C], labels [B, T]) aligned position by position, ``IGNORE_INDEX`` where nothing is predicted."""
    if task == "causal_lm":
        if labels is None:
            ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
            if ids is None:
                raise ValueError("fisher_scores: a causal LM batch needs 'labels' or 'input_ids'")
            labels = ids.clone()
            mask = attention_mask_of(inputs)
            if mask is not None:
                labels[mask == 0] = IGNORE_INDEX
        targets = labels[:, 1:].to(logits.device)
        mask = attention_mask_of(inputs)
        if mask is not None:  # a padding position predicts nothing (with left padding it precedes the first token)
            targets = targets.masked_fill(mask[:, :-1].to(targets.device) == 0, IGNORE_INDEX)
        return logits[:, :-1], targets
    if task == "seq2seq_lm":
        if labels is None:  # kind="true": every decoder position (but decoder padding) is a sample position
            labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
            mask = attention_mask_of(inputs, "decoder_attention_mask")
            if mask is not None:
                labels[mask.to(labels.device) == 0] = IGNORE_INDEX
        return logits, labels.to(logits.device)
    if labels is None:
        labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        mask = attention_mask_of(inputs)
        if mask is not None:
            labels[mask == 0] = IGNORE_INDEX
    return logits, labels.to(logits.device)


def per_sample_nll(
    task: str, kind: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any, seed: int, start: int
) -> torch.Tensor:
    """Negative log-likelihood of each sample ``[B]`` (fp32); for ``kind="true"`` of labels drawn from the model."""
    batch = logits.shape[0]
    if kind == "empirical" and labels is None and task != "causal_lm":
        raise ValueError(
            "fisher_scores: kind='empirical' needs the true labels, but the batch has no 'labels'; "
            "add them or use kind='true' to sample labels from the model"
        )
    if task in ("sequence_classification", "image_classification"):
        if kind == "true":
            u = torch.stack([_uniforms(seed, start + i, 1)[0] for i in range(batch)])
            labels = _sample_categorical(logits, u)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -logp.gather(1, labels.to(logits.device).long().view(-1, 1)).squeeze(1)
    if task == "regression":
        pred = logits.float().reshape(batch, -1)
        if kind == "true":
            noise = torch.stack([_normals(seed, start + i, pred.shape[1]) for i in range(batch)])
            target = pred.detach() + noise.to(pred)
        else:
            target = labels.to(pred).reshape(batch, -1)
        return 0.5 * (pred - target).square().sum(1)
    if task == "multi_label_classification":
        pred = logits.float().reshape(batch, -1)
        if kind == "true":
            u = torch.stack([_uniforms(seed, start + i, pred.shape[1]) for i in range(batch)])
            target = (u.to(pred.device) < torch.sigmoid(pred.detach()).double()).to(pred)
        else:
            target = labels.to(pred).reshape(batch, -1)
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").sum(1)
    if task in ("token_classification", "causal_lm", "seq2seq_lm"):
        tok_logits, tok_labels = _token_targets(task, logits, labels, inputs)
        valid = tok_labels != IGNORE_INDEX
        if kind == "true":
            tok_labels = torch.full_like(tok_labels, IGNORE_INDEX)
            for i in range(batch):
                pos = valid[i].nonzero().squeeze(1)
                if pos.numel():
                    u = _uniforms(seed, start + i, pos.numel())
                    tok_labels[i, pos] = _sample_categorical(tok_logits[i, pos], u)
        nll = F.cross_entropy(
            tok_logits.float().flatten(0, 1), tok_labels.clamp(min=0).flatten(), reduction="none"
        ).view(tok_labels.shape)
        return (nll * valid).sum(1)
    raise ValueError(f"fisher_scores: unknown task {task!r}; use one of {TASKS}")


def reference_nll(
    task: str, kind: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any, seed: int, index: int
) -> torch.Tensor:
    """Log-likelihood of one sample written plainly (torch losses); shares only the label draw with the batched path."""
    logits = logits.float()
    if task in ("sequence_classification", "image_classification"):
        y = _sample_categorical(logits, _uniforms(seed, index, 1)) if kind == "true" else labels.view(-1).long()
        return F.cross_entropy(logits, y.to(logits.device), reduction="sum")
    if task == "regression":
        pred = logits.reshape(-1)
        y = pred.detach() + _normals(seed, index, pred.numel()).to(pred) if kind == "true" else labels.reshape(-1)
        return 0.5 * F.mse_loss(pred, y.to(pred), reduction="sum")
    if task == "multi_label_classification":
        pred = logits.reshape(-1)
        if kind == "true":
            y = (_uniforms(seed, index, pred.numel()).to(pred.device) < torch.sigmoid(pred.detach()).double()).float()
        else:
            y = labels.reshape(-1).float()
        return F.binary_cross_entropy_with_logits(pred, y.to(pred), reduction="sum")
    if task == "causal_lm":
        y = labels if labels is not None else inputs["input_ids"]
        logits, y = logits[0, :-1], y[0, 1:].to(logits.device)
    elif task in ("token_classification", "seq2seq_lm"):
        logits, y = logits[0], labels[0].to(logits.device) if labels is not None else None
        if y is None:
            y = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    else:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    if kind == "true":
        pos = (y != IGNORE_INDEX).nonzero().squeeze(1)
        y = torch.full_like(y, IGNORE_INDEX)
        y[pos] = _sample_categorical(logits[pos], _uniforms(seed, index, pos.numel()))
    return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")


__all__ = [
    "KINDS",
    "TASKS",
    "detect_task",
    "per_sample_nll",
    "reference_nll",
]
