# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Per-sample routing (`adapter_names=[...]`): every row sees its own adapter everywhere, heads and beams included."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from lntune import LNTuneConfig

from ..models import build


def _with_distinct_heads(model_id: str, task_type: str):
    """Two adapters whose norm deltas *and* head copies differ from each other and from the base head."""
    base, batch_fn, _ = build(model_id)
    model = get_peft_model(base, LNTuneConfig(task_type=task_type, init_weights=False), adapter_name="a")
    model.add_adapter("b", LNTuneConfig(task_type=task_type, init_weights=False))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param))
    return model.eval(), batch_fn


def _alone(model, name: str, fn):
    """`fn()` with only adapter `name` active ("__base__": adapters disabled)."""
    if name == "__base__":
        with model.disable_adapter():
            return fn()
    model.set_adapter(name)
    return fn()


@pytest.mark.parametrize("model_id", ["bert", "roberta"])
def test_mixed_batch_uses_each_adapters_own_head(model_id):
    model, batch_fn = _with_distinct_heads(model_id, "SEQ_CLS")
    batch = batch_fn(4)
    names = ["a", "b", "__base__", "b"]
    mixed = model(**batch, adapter_names=names).logits.detach()
    for i, name in enumerate(names):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        ref = _alone(model, name, lambda row=row: model(**row).logits.detach())
        torch.testing.assert_close(mixed[i : i + 1], ref, atol=1e-5, rtol=0, msg=f"row {i} ({name})")
    # the heads really differ, so the check above could fail
    assert not torch.allclose(mixed[0], mixed[2], atol=1e-3) and not torch.allclose(mixed[1], mixed[2], atol=1e-3)


def _generation_setup(model_id: str):
    task = "SEQ_2_SEQ_LM" if model_id == "t5" else "CAUSAL_LM"
    base, _, _ = build(model_id)
    torch.manual_seed(0)
    model = get_peft_model(base, LNTuneConfig(task_type=task, init_weights=False), adapter_name="a")
    torch.manual_seed(1)
    model.add_adapter("b", LNTuneConfig(task_type=task, init_weights=False))
    with torch.no_grad():  # large deltas, so that each adapter generates different tokens on a random tiny model
        for name, param in model.named_parameters():
            if ".lntune_" in name:
                param.mul_(20.0)
    g = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 100, (3, 6), generator=g)
    return model.eval(), input_ids


@pytest.mark.parametrize("model_id", ["gpt2", "llama", "t5"])
def test_beam_search_with_adapter_names_equals_each_row_alone(model_id):
    model, input_ids = _generation_setup(model_id)
    kwargs = dict(num_beams=3, max_new_tokens=6, do_sample=False, pad_token_id=0, decoder_start_token_id=0)
    names = ["a", "b", "__base__"]
    mixed = model.generate(input_ids=input_ids, adapter_names=names, **kwargs)
    for i, name in enumerate(names):
        out = _alone(model, name, lambda i=i: model.generate(input_ids=input_ids[i : i + 1], **kwargs))
        assert torch.equal(mixed[i, : out.shape[1]], out[0]), f"row {i} ({name}): {mixed[i]} vs {out[0]}"
    # the adapters change the generated text, so routing mistakes would show
    model.set_adapter("a")
    all_a = model.generate(input_ids=input_ids, **kwargs)
    assert not torch.equal(all_a, mixed)


def test_num_return_sequences_with_adapter_names():
    model, input_ids = _generation_setup("gpt2")
    kwargs = dict(num_beams=2, num_return_sequences=2, max_new_tokens=4, do_sample=False, pad_token_id=0)
    names = ["b", "a", "b"]
    mixed = model.generate(input_ids=input_ids, adapter_names=names, **kwargs)
    assert mixed.shape[0] == 6
    for i, name in enumerate(names):
        out = _alone(model, name, lambda i=i: model.generate(input_ids=input_ids[i : i + 1], **kwargs))
        assert torch.equal(mixed[2 * i : 2 * i + 2, : out.shape[1]], out)
