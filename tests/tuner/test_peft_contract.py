# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""What peft promises of every tuner, checked for lntune (in the style of peft's tests/test_custom_models.py).

Toy models (an MLP with LayerNorm, one with RMSNorm, a conv net with GroupNorm) plus tiny transformers, each with
LNTuneConfig rows, run against the same invariants: `in_features`/`out_features`, `autocast_adapter_dtype`,
merge/unmerge/merge_and_unload, `disable_adapter`, the save/load round trip and `delete_adapter`.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from lntune import LNTuneConfig, LNTuneLayer

from ..models import build


class MLPLayerNorm(nn.Module):
    def __init__(self, norm: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.layernorm0 = norm(20)
        self.lin1 = nn.Linear(20, 20)
        self.layernorm1 = norm(20)
        self.lin2 = nn.Linear(20, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.layernorm0(torch.relu(self.lin0(X)))
        X = self.layernorm1(torch.relu(self.lin1(X)))
        return self.lin2(X)


class ConvGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.groupnorm = nn.GroupNorm(2, 8)
        self.lin = nn.Linear(8, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin(self.groupnorm(self.conv(X)).mean((-1, -2)))


class Wrapped(nn.Module):
    """A transformers model from tests.models, called with a batch tensor and returning its logits."""

    def __init__(self, model_id: str) -> None:
        super().__init__()
        self.model, _, _ = build(model_id)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=X).logits


TOY_MODELS = {
    "MLP_LayerNorm": (lambda: MLPLayerNorm(), lambda: torch.randn(4, 10)),
    "MLP_RMSNorm": (lambda: MLPLayerNorm(nn.RMSNorm), lambda: torch.randn(4, 10)),
    "Conv_GroupNorm": (ConvGroupNorm, lambda: torch.randn(4, 3, 6, 6)),
    "BERT": (lambda: Wrapped("bert"), lambda: torch.randint(3, 100, (4, 7))),
    "Llama": (lambda: Wrapped("llama"), lambda: torch.randint(3, 100, (4, 7))),
}


def make(model_id: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor]:
    build_model, inputs = TOY_MODELS[model_id]
    torch.manual_seed(0)
    model = build_model().eval().to(dtype)
    torch.manual_seed(1)
    X = inputs()
    return model, (X.to(dtype) if X.is_floating_point() else X)


#########
# LNTune #
#########
TEST_CASES = [
    ("LayerNorm all LNTune", "MLP_LayerNorm", LNTuneConfig, {}),
    ("LayerNorm 1 LNTune", "MLP_LayerNorm", LNTuneConfig, {"target_modules": ["layernorm0"]}),
    ("LayerNorm gains LNTune", "MLP_LayerNorm", LNTuneConfig, {"params": "weight"}),
    (
        "LayerNorm mask LNTune",
        "MLP_LayerNorm",
        LNTuneConfig,
        {"mask": {"layernorm1": {"weight": [0, 3], "bias": [1]}}},
    ),
    ("RMSNorm LNTune", "MLP_RMSNorm", LNTuneConfig, {}),
    ("GroupNorm LNTune", "Conv_GroupNorm", LNTuneConfig, {}),
    ("BERT LNTune", "BERT", LNTuneConfig, {}),
    ("Llama RMSNorm LNTune", "Llama", LNTuneConfig, {}),
]
ARGS = "test_name,model_id,config_cls,config_kwargs"
IDS = [c[0] for c in TEST_CASES]


def _layers(model: nn.Module) -> list[LNTuneLayer]:
    return [m for m in model.modules() if isinstance(m, LNTuneLayer)]


def _deltas(model: nn.Module, adapter_name: str = "default") -> list[torch.Tensor]:
    return [
        store[adapter_name]
        for m in _layers(model)
        for store in (m.lntune_weight, m.lntune_bias)
        if adapter_name in store
    ]


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_in_out_features(test_name, model_id, config_cls, config_kwargs):
    model, _ = make(model_id)
    model = get_peft_model(model, config_cls(**config_kwargs))
    for layer in _layers(model):
        base = layer.get_base_layer()
        size = (base.weight if base.weight is not None else base.bias).shape[0]
        assert layer.in_features == layer.out_features == size


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype(test_name, model_id, config_cls, config_kwargs, autocast, tmp_path):
    """fp32 deltas by default, the base dtype with autocast_adapter_dtype=False: on create, add, load, low-mem load."""
    expected = torch.float32 if autocast else torch.bfloat16
    base, _ = make(model_id, torch.bfloat16)
    model = get_peft_model(base, config_cls(**config_kwargs, init_weights=False), autocast_adapter_dtype=autocast)
    assert {d.dtype for d in _deltas(model)} == {expected}
    model.add_adapter("other", config_cls(**config_kwargs), autocast_adapter_dtype=autocast)
    assert {d.dtype for d in _deltas(model, "other")} == {expected}
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        fresh, _ = make(model_id, torch.bfloat16)
        loaded = PeftModel.from_pretrained(
            fresh, tmp_path, autocast_adapter_dtype=autocast, low_cpu_mem_usage=low_cpu_mem_usage
        )
        assert {d.dtype for d in _deltas(loaded)} == {expected}, f"from_pretrained, {low_cpu_mem_usage=}"
        loaded.load_adapter(tmp_path, "second", autocast_adapter_dtype=autocast, low_cpu_mem_usage=low_cpu_mem_usage)
        assert {d.dtype for d in _deltas(loaded, "second")} == {expected}, f"load_adapter, {low_cpu_mem_usage=}"
        for a, b in zip(_deltas(model), _deltas(loaded, "second")):
            torch.testing.assert_close(a.float(), b.float(), atol=0, rtol=0)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_merge_unmerge_merge_and_unload(test_name, model_id, config_cls, config_kwargs):
    base, X = make(model_id)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    ref = base(X).detach()
    model = get_peft_model(base, config_cls(**config_kwargs, init_weights=False)).eval()
    adapted = model(X).detach()
    assert not torch.allclose(adapted, ref, atol=1e-4)
    model.merge_adapter()
    torch.testing.assert_close(model(X), adapted, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(model(X), adapted, atol=1e-5, rtol=1e-5)
    for layer in _layers(model):  # unmerge restores the base values exactly
        name = layer.module_name
        for pname in ("weight", "bias"):
            if getattr(layer.get_base_layer(), pname, None) is not None:
                assert torch.equal(getattr(layer.get_base_layer(), pname), original[f"{name}.{pname}"])
    merged = model.merge_and_unload()
    assert not _layers(merged)
    torch.testing.assert_close(merged(X), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_disable_adapter(test_name, model_id, config_cls, config_kwargs):
    base, X = make(model_id)
    ref = base(X).detach()
    model = get_peft_model(base, config_cls(**config_kwargs, init_weights=False)).eval()
    adapted = model(X).detach()
    with model.disable_adapter():
        torch.testing.assert_close(model(X), ref, atol=0, rtol=0)
    torch.testing.assert_close(model(X), adapted, atol=0, rtol=0)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_save_load_round_trip(test_name, model_id, config_cls, config_kwargs, tmp_path):
    base, X = make(model_id)
    model = get_peft_model(base, config_cls(**config_kwargs, init_weights=False)).eval()
    adapted = model(X).detach()
    model.save_pretrained(tmp_path)
    fresh, _ = make(model_id)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    torch.testing.assert_close(loaded(X), adapted, atol=0, rtol=0)
    for a, b in zip(_deltas(model), _deltas(loaded)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_delete_adapter(test_name, model_id, config_cls, config_kwargs):
    base, X = make(model_id)
    model = get_peft_model(base, config_cls(**config_kwargs, init_weights=False), adapter_name="a").eval()
    out_a = model(X).detach()
    model.add_adapter("b", config_cls(**config_kwargs, init_weights=False))
    model.set_adapter("b")
    model.delete_adapter("b")
    assert model.active_adapters == ["a"]
    assert not any(layer.has_adapter("b") for layer in _layers(model))
    assert "b" not in model.peft_config
    torch.testing.assert_close(model(X), out_a, atol=0, rtol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".lntune_" in n and n.endswith(".a")
    }


# models whose norms get the exact fp32 affine on a bf16 base (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, transformers'
# Llama/T5/Gemma RMSNorms)
BF16_MODELS = ["bert", "gpt2", "llama", "gemma", "t5", "vit"]


@pytest.mark.parametrize("model_id", BF16_MODELS)
def test_small_gain_deltas_act_on_bf16_bases(model_id):
    """All gains +0.003 (under bf16's step of 1/128 near 1) must change the output of a bf16 model."""
    base, batch_fn, key = build(model_id)
    base = base.to(torch.bfloat16)
    model = get_peft_model(base, LNTuneConfig(params="weight")).eval()
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch_fn(2).items()}
    with model.disable_adapter():
        ref = getattr(model(**batch), key).float()
    with torch.no_grad():
        for delta in _deltas(model):
            delta.fill_(0.003)
    out = getattr(model(**batch), key).float()
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    # and zero deltas give the base model's output (up to one bf16 rounding step)
    with torch.no_grad():
        for delta in _deltas(model):
            delta.zero_()
    torch.testing.assert_close(getattr(model(**batch), key).float(), ref, atol=0.05, rtol=0.02)
