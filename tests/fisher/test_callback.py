# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""FisherSelectionCallback: one flag for Trainer users, selection before the first step."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from datasets import Dataset
from peft import get_peft_model

from lntune import LNTuneConfig
from lntune.fisher.callback import FisherSelectionCallback, swap_optimizer_params

from ..models import build


def test_trainer_with_fisher_callback_trains_only_the_selection(tmp_path):
    base, _, _ = build("bert")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (24, 8), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] > 50).long().tolist()})
    callback = FisherSelectionCallback(count=20, num_samples=16)
    args = tf.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    tf.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert sum(len(idx) for per_param in callback.mask.values() for idx in per_param.values()) == 20
    assert callback.summary["selected"] == 20
    n_deltas = sum(p.numel() for n, p in model.named_parameters() if ".lntune_" in n)
    assert n_deltas == 20  # the adapter now holds exactly the selected scalars
    moved = sum(
        int(layer.dense_delta(p, "default").count_nonzero())
        for _, layer in model.base_model.lntune_layers()
        for p in ("weight", "bias")
        if layer.dense_delta(p, "default") is not None
    )
    assert 0 < moved <= 20
    assert model.peft_config["default"].mask == callback.mask


def test_scores_of_an_lntune_model_equal_the_base_model_scores():
    """The wrapper computes the norm itself: scoring must hook the wrapper, not the (bypassed) base module."""
    from lntune.fisher import fisher_scores

    base, batch_fn, _ = build("bert")
    g = torch.Generator().manual_seed(0)
    batches = [{**batch_fn(4), "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(2)]
    plain = fisher_scores(base, batches, num_samples=None, progress=False)
    wrapped = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    scores = fisher_scores(wrapped, batches, num_samples=None, progress=False)
    for name, per_param in plain.items():
        for pname, value in per_param.items():
            assert value.abs().sum() > 0
            torch.testing.assert_close(scores[name][pname], value, rtol=1e-4, atol=1e-12)


def test_swap_optimizer_params_moves_tensors_and_refuses_once_state_exists():
    a, b, c, new_a = (torch.nn.Parameter(torch.ones(3)) for _ in range(4))
    optimizer = torch.optim.Adam([{"params": [a, b]}, {"params": [c]}], lr=0.1)
    assert swap_optimizer_params(optimizer, {a: new_a, c: None}) == 2
    assert optimizer.param_groups[0]["params"] == [new_a, b] and optimizer.param_groups[1]["params"] == []
    # after a step the optimizer holds Adam moments for b: swapping it is refused, and nothing changes
    b.grad = torch.ones(3)
    optimizer.step()
    before = [list(group["params"]) for group in optimizer.param_groups]
    with pytest.raises(RuntimeError, match="already holds state for 1 of the parameters"):
        swap_optimizer_params(optimizer, {new_a: None, b: torch.nn.Parameter(torch.ones(1))})
    assert [list(group["params"]) for group in optimizer.param_groups] == before
