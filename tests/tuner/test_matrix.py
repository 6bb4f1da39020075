# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The tuner test matrix: every case is checked against the same invariants (peft's test_custom_models pattern)."""

from __future__ import annotations

import pytest

from lntune import find_norms

from . import testing_common as tc


def _first_indices(model, k: int = 3) -> dict:
    """A small hand-made mask: the first k gains and biases of every norm."""
    return {
        info.name: {p: list(range(min(k, shape[0]))) for p, shape in info.shapes.items()} for info in find_norms(model)
    }


# (test name, model id, LNTuneConfig kwargs, atol)
TEST_CASES = [
    # ---- every norm, every architecture
    ("BERT all norms", "bert", {"task_type": "SEQ_CLS"}, 1e-6),
    ("RoBERTa all norms", "roberta", {"task_type": "SEQ_CLS"}, 1e-6),
    ("GPT-2 all norms", "gpt2", {"task_type": "CAUSAL_LM"}, 1e-5),
    ("Llama RMSNorm", "llama", {"task_type": "CAUSAL_LM"}, 1e-5),
    ("Gemma 1+w RMSNorm", "gemma", {"task_type": "CAUSAL_LM"}, 1e-5),
    ("T5 bias-free LayerNorm", "t5", {"task_type": "SEQ_2_SEQ_LM"}, 1e-5),
    ("HF ViT", "vit", {}, 1e-6),
    ("timm ViT", "timm_vit", {}, 1e-6),
    ("timm ConvNeXt LayerNorm2d", "timm_convnext", {}, 1e-5),
    ("GroupNorm CNN", "groupnorm_cnn", {}, 1e-6),
    # ---- filters, presets and parameter choices
    ("BERT output LN only", "bert", {"task_type": "SEQ_CLS", "preset": "output"}, 1e-6),
    (
        "BERT attention LN gains only",
        "bert",
        {"task_type": "SEQ_CLS", "roles": ["attention"], "params": "weight"},
        1e-6,
    ),
    ("GPT-2 biases only", "gpt2", {"params": "bias"}, 1e-5),
    ("ViT regex target", "vit", {"target_modules": r".*layers?\.1\..*"}, 1e-6),  # `layer.N` before transformers 5
    ("Llama exclude final norm", "llama", {"exclude_modules": ["model.norm"]}, 1e-5),
    # ---- sparse (masked) adapters
    ("BERT masked subset", "bert", {"task_type": "SEQ_CLS", "mask": _first_indices}, 1e-6),
    ("Llama masked subset", "llama", {"mask": _first_indices}, 1e-5),
    # ---- the real pretrained MiniLM
    ("MiniLM all norms", "minilm", {"task_type": "SEQ_CLS"}, 1e-5),
]
IDS = [c[0] for c in TEST_CASES]
ARGS = "name,model_id,config_kwargs,atol"


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_identity_init(name, model_id, config_kwargs, atol):
    tc.check_identity_init(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_only_targets_train(name, model_id, config_kwargs, atol):
    tc.check_only_targets_train(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_disable_gives_base(name, model_id, config_kwargs, atol):
    tc.check_adapter_changes_output(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_merge_unmerge(name, model_id, config_kwargs, atol):
    tc.check_merge(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_unload(name, model_id, config_kwargs, atol):
    tc.check_unload(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_save_load(name, model_id, config_kwargs, atol, tmp_path):
    tc.check_save_load(model_id, config_kwargs, atol, tmp_path)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_multi_adapter_and_mixed_batch(name, model_id, config_kwargs, atol):
    tc.check_multi_adapter(model_id, config_kwargs, atol)


@pytest.mark.parametrize(ARGS, TEST_CASES, ids=IDS)
def test_bf16(name, model_id, config_kwargs, atol):
    tc.check_bf16(model_id, config_kwargs, atol)
