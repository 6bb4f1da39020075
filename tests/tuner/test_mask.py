# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Sparse (masked) adapters: set after creation, trained, saved compactly, reloaded exactly."""

from __future__ import annotations

import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from lntune import LNTuneConfig

from ..models import build


def test_set_mask_keeps_selected_values_and_saves_only_them(tmp_path):
    base, batch_fn, _ = build("bert")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False)).eval()
    layer = model.base_model.model.bert.encoder.layer[0].output.LayerNorm
    dense_w = layer.dense_delta("weight", "default").detach().clone()
    mask = {"bert.encoder.layer.0.output.LayerNorm": {"weight": [1, 4, 9]}}
    swapped = model.set_mask(mask)
    assert sum(new is not None for new in swapped.values()) == 1  # one tensor survives, the rest are dropped
    kept = layer.dense_delta("weight", "default").detach()
    assert torch.equal(kept[[1, 4, 9]], dense_w[[1, 4, 9]]) and kept.count_nonzero() == 3
    assert layer.dense_delta("bias", "default") is None
    batch = batch_fn(3)
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    lntune_keys = [k for k in saved if ".lntune_" in k]
    assert lntune_keys == ["base_model.model.bert.encoder.layer.0.output.LayerNorm.lntune_weight"]
    assert saved[lntune_keys[0]].numel() == 3
    fresh, _, _ = build("bert")
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-6, rtol=0)


def test_one_percent_mask_file_is_a_few_kb(tmp_path):
    base, _, _ = build("minilm")
    from lntune import find_norms

    norms = find_norms(base)
    mask = {n.name: {"weight": list(range(0, 384, 100)), "bias": [3]} for n in norms[:12]}  # ~1% of 9,984 scalars
    model = get_peft_model(base, LNTuneConfig(mask=mask))  # no head: only the LN scalars are saved
    model.save_pretrained(tmp_path)
    assert os.path.getsize(tmp_path / "adapter_model.safetensors") < 5_000


def _masked_model():
    base, batch_fn, _ = build("bert")
    return get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False)).eval(), batch_fn


def _n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "mask,error,match",
    [
        ({"bert.encoder.layer.0.output.LayerNor": {"weight": [1]}}, ValueError, "not a normalization layer"),
        ({"transformer.h.0.ln_1": {"weight": [1]}}, ValueError, "not a normalization layer"),
        ({"bert.encoder.layer.0.output.LayerNorm": {"weight": [32]}}, ValueError, "does not match this model's"),
        ({"bert.encoder.layer.0.output.LayerNorm": {"weight": []}}, ValueError, "selects no scalar"),
        ({"bert.encoder.layer.0.output.LayerNorm": {"gamma": [1]}}, ValueError, "keys 'weight' and/or 'bias'"),
    ],
)
def test_set_mask_validates_the_new_mask(mask, error, match):
    """A bad mask must fail loudly and leave the adapter untouched (it used to silently drop every delta)."""
    model, _ = _masked_model()
    before = _n_trainable(model)
    with pytest.raises(error, match=match):
        model.set_mask(mask)
    assert _n_trainable(model) == before


def test_set_mask_accepts_peft_model_names():
    model, batch_fn = _masked_model()
    model.set_mask({"base_model.model.bert.encoder.layer.0.output.LayerNorm": {"weight": [1, 4]}})
    layer = model.base_model.model.bert.encoder.layer[0].output.LayerNorm
    assert layer.dense_delta("weight", "default").count_nonzero() == 2
    assert list(model.peft_config["default"].mask) == ["bert.encoder.layer.0.output.LayerNorm"]


def test_set_mask_cannot_add_parameters():
    base, _, _ = build("bert")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", params="weight"))
    with pytest.raises(ValueError, match="tunes only params='weight'"):
        model.set_mask({"bert.encoder.layer.0.output.LayerNorm": {"bias": [1]}})
