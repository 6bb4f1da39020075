# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Sparse (masked) adapters: set after creation, trained, saved compactly, reloaded exactly."""

from __future__ import annotations

import os

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from lntune import LNTuneConfig

from .models import build


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
