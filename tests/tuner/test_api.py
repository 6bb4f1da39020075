# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The public tuner API that code built on lntune uses (lntune.continual): adapter tensors and per-norm routing."""

from __future__ import annotations

import pytest
import torch

from lntune import LNTuneConfig, LNTuneLayer

from . import testing_common as tc


def _two_adapters():
    model, batch_fn, key = tc.make_peft("bert", {"task_type": "SEQ_CLS", "init_weights": False}, adapter_name="a")
    model.add_adapter("b", LNTuneConfig(task_type="SEQ_CLS", init_weights=False))
    return model.eval(), batch_fn, key


def test_adapter_params_are_the_trainable_deltas_under_base_model_names():
    model, _, _ = _two_adapters()
    params = model.adapter_params("a")
    layers = dict(model.base_model.lntune_layers())
    assert params and all(k.rsplit(".", 1)[0] in layers for k in params)
    assert all(k.endswith((".weight", ".bias")) and not k.startswith("base_model.") for k in params)
    for key, param in params.items():
        name, pname = key.rsplit(".", 1)
        assert param is layers[name].adapter_params("a")[pname]
    with pytest.raises(ValueError, match="No adapter named 'zz'"):
        model.adapter_params("zz")


def test_copy_adapter_values_makes_two_adapters_equal():
    model, batch_fn, key = _two_adapters()
    batch = batch_fn(2)
    model.base_model.copy_adapter_values("a", "b")
    model.set_adapter("a")
    out_a = tc.model_output(model, batch, key)
    model.set_adapter("b")
    torch.testing.assert_close(tc.model_output(model, batch, key), out_a)
    for key_a, value in model.adapter_params("a").items():
        assert model.adapter_params("b")[key_a] is not value  # copied, not shared


def test_copy_between_adapters_with_different_tensors_is_refused():
    model, _, _ = _two_adapters()
    model.add_adapter("g", LNTuneConfig(task_type="SEQ_CLS", params="weight"))
    with pytest.raises(ValueError, match="hold different tensors"):
        model.base_model.copy_adapter_values("a", "g")


def test_routing_every_norm_by_hand_equals_adapter_names():
    model, batch_fn, key = _two_adapters()
    batch = batch_fn(3)
    names = ["a", "b", "__base__"]
    expected = model(**batch, adapter_names=names).logits.detach()
    layers = [m for m in model.modules() if isinstance(m, LNTuneLayer)]
    for layer in layers:
        layer.set_routing(names)
    # the heads are routed by adapter_names only: compare the norms' effect through the encoder output
    with torch.no_grad():
        routed = model.base_model.model.bert(**batch).last_hidden_state
    for layer in layers:
        layer.set_routing(None)
    with torch.no_grad():
        reference = torch.stack([_encoder_row(model, batch, i, name) for i, name in enumerate(names)])
    torch.testing.assert_close(routed, reference, atol=1e-5, rtol=0)
    assert expected.shape[0] == 3
    with layers[0].routed(["a", "a", "a"]):
        assert layers[0].routing is not None and layers[0].routing.names == ["a", "a", "a"]
    assert layers[0].routing is None


def _encoder_row(model, batch, i, name):
    row = {k: v[i : i + 1] for k, v in batch.items()}
    if name == "__base__":
        with model.disable_adapter():
            return model.base_model.model.bert(**row).last_hidden_state[0]
    model.set_adapter(name)
    return model.base_model.model.bert(**row).last_hidden_state[0]
