# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Bad input gets a clear error that says what was wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from lntune import LNTuneConfig, LNTuneLayer

from ..models import build
from . import testing_common as tc


def _bert():
    return build("bert")


def test_config_matching_no_norm_lists_norm_types():
    base, _, _ = _bert()
    with pytest.raises(ValueError, match=r"matched no normalization layer.*LayerNorm x5"):
        get_peft_model(base, LNTuneConfig(target_modules=["nothing_here"]))


def test_target_that_is_not_a_norm():
    base, _, _ = _bert()
    with pytest.raises(ValueError, match=r"not normalization layers.*query \(Linear\)"):
        get_peft_model(base, LNTuneConfig(target_modules=["query"]))


def test_model_without_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no normalization layer"):
        get_peft_model(model, LNTuneConfig())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"params": "gain"}, "params must be one of"),
        ({"roles": ["ffn"]}, "roles must be a non-empty subset"),
        ({"preset": "nope"}, "Unknown preset"),
        ({"preset": "output", "roles": ["output"]}, "either `preset` or `roles`"),
        ({"mask": {"x": {"gamma": [1]}}}, "keys 'weight' and/or 'bias'"),
        ({"mask": {"x": {"weight": [-1]}}}, "negative index"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LNTuneConfig(**kwargs)


def test_mask_for_another_model():
    base, _, _ = _bert()
    with pytest.raises(ValueError, match="not a normalization layer of this model"):
        get_peft_model(base, LNTuneConfig(mask={"encoder.h.0.ln_1": {"weight": [0]}}))
    base, _, _ = _bert()
    with pytest.raises(ValueError, match="does not match this model's shapes"):
        get_peft_model(base, LNTuneConfig(mask={"bert.embeddings.LayerNorm": {"weight": [999]}}))


def _two_adapters():
    base, batch_fn, _ = _bert()
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False), adapter_name="a")
    model.add_adapter("b", LNTuneConfig(task_type="SEQ_CLS", init_weights=False))
    return model.eval(), batch_fn


def test_unknown_adapter_name_in_mixed_batch():
    model, batch_fn = _two_adapters()
    with pytest.raises(ValueError, match=r"Unknown adapter name\(s\) \['c'\].*available: \['a', 'b'\]"):
        model(**batch_fn(2), adapter_names=["a", "c"])


def test_unknown_adapter_in_set_adapter():
    model, _ = _two_adapters()
    with pytest.raises(ValueError, match="c"):
        model.set_adapter("c")


def test_adapter_names_length_differs_from_batch():
    model, batch_fn = _two_adapters()
    with pytest.raises(ValueError, match="adapter_names has 3 entries but .* 2 rows"):
        model(**batch_fn(2), adapter_names=["a", "b", "a"])


def test_mixed_batch_while_merged():
    model, batch_fn = _two_adapters()
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        model(**batch_fn(2), adapter_names=["a", "b"])


def test_load_onto_wrong_base(tmp_path):
    import transformers as tf

    base, _, _ = _bert()
    get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS")).save_pretrained(tmp_path)
    other = tf.BertForSequenceClassification(
        tf.BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100)
    )
    with pytest.raises(
        ValueError, match=r"Base model mismatch at 'bert.embeddings.LayerNorm.(weight|bias)'.*\[32\].*\[48\]"
    ):
        PeftModel.from_pretrained(other, tmp_path)
    gpt2, _, _ = build("gpt2")
    with pytest.raises(ValueError, match="norm layer 'bert.embeddings.LayerNorm', which this model does not have"):
        PeftModel.from_pretrained(gpt2, tmp_path)


def test_save_path_is_a_file(tmp_path):
    base, _, _ = _bert()
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="should be a directory, not a file"):
        model.save_pretrained(str(target))
    assert target.read_text() == "keep me"


def test_failed_save_leaves_previous_adapter_intact(tmp_path, monkeypatch):
    """A crash while writing must not leave a half-written adapter file behind."""
    import safetensors.torch

    from lntune import io

    base, _, _ = _bert()
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "adapter_model.safetensors").read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp-")]
    assert safetensors.torch.load_file(tmp_path / "adapter_model.safetensors")


def test_saved_adapter_has_normal_file_permissions(tmp_path):
    base, _, _ = _bert()
    get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS")).save_pretrained(tmp_path)
    mode = (tmp_path / "adapter_model.safetensors").stat().st_mode & 0o777
    assert mode == (tmp_path / "adapter_config.json").stat().st_mode & 0o777


def test_mixed_batch_trains_each_adapter_on_its_rows():
    model, batch_fn = _two_adapters()
    model.train()
    model.set_requires_grad(["a", "b"], True)
    names = ["a", "a", "b", "__base__"]
    out = model(**batch_fn(4), adapter_names=names).logits
    per_adapter = {
        name: [
            p
            for n, p in model.named_parameters()
            if (n.endswith(f".lntune_weight.{name}") or f".modules_to_save.{name}." in n) and p.requires_grad
        ]
        for name in "ab"
    }
    assert all(per_adapter.values())
    # row i's loss reaches adapter names[i]'s deltas (and head copy), and nothing of the other adapter
    for i, name in enumerate(names):
        for adapter, params in per_adapter.items():
            grads = torch.autograd.grad(out[i].sum(), params, retain_graph=True, allow_unused=True)
            reached = [g is not None and bool(g.abs().sum() > 0) for g in grads]
            if adapter == name:
                assert all(reached), f"row {i} ({name}) left some of {adapter}'s parameters without gradient"
            else:
                assert not any(reached), f"row {i} ({name}) sent gradient to adapter {adapter}"


def test_model_with_only_batchnorm_has_no_norm_to_tune():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ValueError, match="no normalization layer lntune can tune"):
        get_peft_model(model, LNTuneConfig())


def _bert_layers(n: int):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BertConfig(
        hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, vocab_size=100
    )
    return tf.BertForSequenceClassification(config).eval()


def test_load_onto_deeper_model_of_same_family(tmp_path):
    """A 2-layer adapter must not load onto a 3-layer model (its extra norms would keep random/zero deltas)."""
    get_peft_model(_bert_layers(2), LNTuneConfig(task_type="SEQ_CLS", init_weights=False)).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"norm layer 'bert.encoder.layer.2.attention.output.LayerNorm' \(and 1 more\)"
    ):
        PeftModel.from_pretrained(_bert_layers(3), tmp_path)
    # and the other way round
    get_peft_model(_bert_layers(3), LNTuneConfig(task_type="SEQ_CLS")).save_pretrained(tmp_path / "deep")
    with pytest.raises(ValueError, match="'bert.encoder.layer.2.attention.output.LayerNorm', which this model does"):
        PeftModel.from_pretrained(_bert_layers(2), tmp_path / "deep")


def test_load_when_config_would_skip_recorded_norms(tmp_path):
    import json

    get_peft_model(_bert_layers(2), LNTuneConfig(task_type="SEQ_CLS")).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config["preset"] = "output"  # the recorded attention/embedding norms would now get no delta
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds deltas for the norm layer 'bert.embeddings.LayerNorm'"):
        PeftModel.from_pretrained(_bert_layers(2), tmp_path)


def test_config_with_nothing_to_train():
    base, _, _ = build("llama")
    with pytest.raises(ValueError, match=r"the matched norms \(LlamaRMSNorm x5\) have no bias"):
        get_peft_model(base, LNTuneConfig(params="bias"))
    base, _, _ = build("llama")
    with pytest.raises(ValueError, match="adapts no scalar"):
        get_peft_model(base, LNTuneConfig(mask={"model.norm": {"weight": []}}))


def test_mask_naming_a_parameter_the_norm_lacks():
    base, _, _ = build("llama")
    with pytest.raises(ValueError, match=r"'model.norm' \(LlamaRMSNorm\) has no bias"):
        get_peft_model(base, LNTuneConfig(mask={"model.norm": {"bias": [0]}}))
    base, _, _ = _bert()
    with pytest.raises(ValueError, match="tunes only params='weight'"):
        get_peft_model(base, LNTuneConfig(params="weight", mask={"bert.embeddings.LayerNorm": {"bias": [0]}}))


def test_safe_merge_of_a_broken_adapter_raises_and_changes_nothing():
    model, batch_fn, key = tc.make_peft("bert", {"task_type": "SEQ_CLS", "init_weights": False})
    layer = next(m for m in model.modules() if isinstance(m, LNTuneLayer))
    base = layer.get_base_layer()
    before = {p: getattr(base, p).detach().clone() for p in ("weight", "bias")}
    with torch.no_grad():
        layer.lntune_bias["default"][0] = float("nan")  # the gain is fine, the bias is broken
    with pytest.raises(ValueError, match="NaNs detected in the merged bias"):
        layer.merge(safe_merge=True)
    assert not layer.merged
    for pname, value in before.items():
        assert torch.equal(getattr(base, pname), value), f"the failed merge changed the base {pname}"
