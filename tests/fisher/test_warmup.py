# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Head warm-up before Fisher scoring: only the head moves, flags and modes come back, bad input fails clearly."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from lntune import LNTuneConfig
from lntune.fisher import fisher_scores, head_parameters, warm_up_head

from ..models import build


def _loader(n: int = 32, batch: int = 8, regression: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (n, 8), generator=g)
    labels = (ids[:, 0].float() / 20.0) if regression else (ids[:, 0] > 50).long()
    return [{"input_ids": ids[i : i + batch], "labels": labels[i : i + batch]} for i in range(0, n, batch)]


def test_only_the_head_moves_and_the_loss_drops():
    model, _, _ = build("bert")
    model.config.num_labels = model.num_labels = 1
    model.config.problem_type = "regression"
    model.classifier = torch.nn.Linear(model.config.hidden_size, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    stats = warm_up_head(model, _loader(regression=True), steps=40, learning_rate=5e-2)
    assert stats["steps"] == 40 and stats["last_loss"] < stats["first_loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"classifier.weight", "classifier.bias"}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training  # the mode it was in


def test_works_on_an_lntune_model_and_changes_the_scores():
    base, _, _ = build("bert")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    heads = head_parameters(model)
    names = {n for n, p in model.named_parameters() if any(p is h for h in heads)}
    assert names and all("modules_to_save" in n for n in names)  # the trainable copy, not the original
    loader = _loader()
    first = fisher_scores(model, loader, num_samples=None, progress=False)
    warm_up_head(model, loader, steps=10, learning_rate=1e-2)
    second = fisher_scores(model, loader, num_samples=None, progress=False)
    name = next(iter(first))
    assert not torch.allclose(first[name]["bias"], second[name]["bias"])
    deltas = [p for n, p in model.named_parameters() if ".lntune_" in n]
    assert deltas and all(p.requires_grad for p in deltas) and all(not p.any() for p in deltas)


def test_cycles_a_short_loader():
    model, _, _ = build("bert")
    assert warm_up_head(model, _loader(n=8), steps=5)["steps"] == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"steps": 2, "loader": []}, ValueError, "yielded no batches"),
        ({"steps": 2, "head": []}, ValueError, "no head parameters"),
        ({"steps": 2, "loader": [(torch.ones(2, 3, dtype=torch.long),)]}, TypeError, "must be dicts"),
        ({"steps": 2, "loader": [{"input_ids": torch.ones(2, 3, dtype=torch.long)}]}, ValueError, "no loss"),
    ],
)
def test_bad_input(kwargs, error, match):
    model, _, _ = build("bert")
    kwargs.setdefault("loader", _loader())
    if "head" in kwargs and not kwargs["head"]:
        kwargs.pop("head")
        model = torch.nn.ModuleDict({"body": model.bert})  # no head module at all
    with pytest.raises(error, match=match):
        warm_up_head(model, **kwargs)
