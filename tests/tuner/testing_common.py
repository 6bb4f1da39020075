# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Invariant checks shared by the tuner test matrix (peft's testing_common, for one method)."""

from __future__ import annotations

import os

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from lntune import LNTuneConfig, LNTuneLayer

from ..models import build


def model_output(model, batch, key) -> torch.Tensor:
    """The output tensor under ``key`` (dict or attribute), detached, as float32."""
    out = model(**batch)
    return (out[key] if isinstance(out, dict) else getattr(out, key)).detach().float()


def make_peft(model_id: str, config_kwargs: dict, adapter_name: str = "default"):
    base, batch_fn, key = build(model_id)
    config_kwargs = dict(config_kwargs)
    if callable(config_kwargs.get("mask")):
        config_kwargs["mask"] = config_kwargs["mask"](base)
    model = get_peft_model(base, LNTuneConfig(**config_kwargs), adapter_name=adapter_name)
    return model, batch_fn, key


def check_identity_init(model_id: str, config_kwargs: dict, atol: float) -> None:
    base, batch_fn, key = build(model_id)
    batch = batch_fn(3)
    ref = model_output(base, batch, key)
    kwargs = {k: v for k, v in config_kwargs.items() if k != "init_weights"}
    if callable(kwargs.get("mask")):
        kwargs["mask"] = kwargs["mask"](base)
    model = get_peft_model(base, LNTuneConfig(**kwargs)).eval()
    torch.testing.assert_close(model_output(model, batch, key), ref, atol=atol, rtol=0)


def check_only_targets_train(model_id: str, config_kwargs: dict, atol: float) -> None:
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    assert all(".lntune_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)[:5]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    out = _out_grad(model, batch_fn(4), key)
    out.pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed, "an optimizer step changed nothing"
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert {n for n in trainable if ".lntune_" in n} <= changed, "some adapter deltas got no update"


def _out_grad(model, batch, key) -> torch.Tensor:
    out = model(**batch)
    return (out[key] if isinstance(out, dict) else getattr(out, key)).float()


def check_adapter_changes_output(model_id: str, config_kwargs: dict, atol: float) -> None:
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False})
    model.eval()
    batch = batch_fn(3)
    adapted = model_output(model, batch, key)
    with model.disable_adapter():
        base = model_output(model, batch, key)
    assert not torch.allclose(adapted, base, atol=atol), "the random-init adapter did not change the output"
    # leaving the context restores the adapter
    torch.testing.assert_close(model_output(model, batch, key), adapted, atol=atol, rtol=0)
    ref_base, _, _ = build(model_id)
    torch.testing.assert_close(base, model_output(ref_base, batch, key), atol=atol, rtol=0)


def check_merge(model_id: str, config_kwargs: dict, atol: float) -> None:
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False})
    model.eval()
    batch = batch_fn(3)
    adapted = model_output(model, batch, key)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(model_output(model, batch, key), adapted, atol=atol, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(model_output(model, batch, key), adapted, atol=atol, rtol=0)
    with model.disable_adapter():
        ref_base, _, _ = build(model_id)
        torch.testing.assert_close(
            model_output(model, batch, key), model_output(ref_base, batch, key), atol=atol, rtol=0
        )
    merged = model.merge_and_unload()
    assert not any(isinstance(m, LNTuneLayer) for m in merged.modules())
    torch.testing.assert_close(model_output(merged, batch, key), adapted, atol=atol, rtol=0)


def check_unload(model_id: str, config_kwargs: dict, atol: float) -> None:
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False})
    batch = batch_fn(3)
    ref_base, _, _ = build(model_id)
    plain = model.eval().unload()
    assert not any(isinstance(m, LNTuneLayer) for m in plain.modules())
    torch.testing.assert_close(model_output(plain, batch, key), model_output(ref_base, batch, key), atol=atol, rtol=0)


def check_save_load(model_id: str, config_kwargs: dict, atol: float, tmp_path) -> None:
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False})
    model.eval()
    batch = batch_fn(3)
    adapted = model_output(model, batch, key)
    model.save_pretrained(tmp_path)
    assert sorted(f for f in os.listdir(tmp_path) if not f.startswith(".")) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lntune_" in n)
    assert sum(t.numel() for k, t in saved.items() if ".lntune_" in k) == n_adapter
    assert all(".lntune_" in k or "modules_to_save" in k or "classifier" in k or "score" in k for k in saved)
    fresh, _, _ = build(model_id)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    torch.testing.assert_close(model_output(loaded, batch, key), adapted, atol=atol, rtol=0)


def check_multi_adapter(model_id: str, config_kwargs: dict, atol: float) -> None:
    torch.manual_seed(1)
    model, batch_fn, key = make_peft(model_id, {**config_kwargs, "init_weights": False}, adapter_name="a")
    kwargs = {**config_kwargs, "init_weights": False}
    if callable(kwargs.get("mask")):
        kwargs["mask"] = kwargs["mask"](model.get_base_model())
    model.add_adapter("b", LNTuneConfig(**kwargs))
    model.eval()
    batch = batch_fn(5)
    out_a = model_output(model, batch, key)
    model.set_adapter("b")
    out_b = model_output(model, batch, key)
    assert not torch.allclose(out_a, out_b, atol=atol)
    # only the active adapter trains: checked on the adapter dicts themselves, not by matching parameter names (a
    # name filter such as '".b" in name' is true for every BERT parameter: "...model.bert...")
    check_only_adapter_trains(model, "b")
    with model.disable_adapter():
        out_base = model_output(model, batch, key)
    # mixed batch: row i uses adapter names[i]; must equal each adapter run alone
    names = ["a", "b", "__base__", "b", "a"]
    mixed = model_output(model, {**batch, "adapter_names": names}, key)
    for i, name in enumerate(names):
        ref = {"a": out_a, "b": out_b, "__base__": out_base}[name]
        torch.testing.assert_close(mixed[i], ref[i], atol=atol, rtol=0)
    model.delete_adapter("b")
    assert model.active_adapters == ["a"]
    assert not any(layer.has_adapter("b") for layer in model.modules() if isinstance(layer, LNTuneLayer))
    assert not any(n.endswith(".b") for n, _ in model.named_parameters())
    model.set_adapter("a")
    torch.testing.assert_close(model_output(model, batch, key), out_a, atol=atol, rtol=0)


def check_only_adapter_trains(model, adapter_name: str) -> None:
    """Exactly `adapter_name`'s deltas and head copies are trainable; every other parameter is frozen."""
    from peft.utils import ModulesToSaveWrapper

    expected: set[int] = set()
    for module in model.modules():
        if isinstance(module, LNTuneLayer):
            for store in (module.lntune_weight, module.lntune_bias):
                if adapter_name in store:
                    expected.add(id(store[adapter_name]))
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            expected.update(id(p) for p in module.modules_to_save[adapter_name].parameters())
    assert expected, f"adapter {adapter_name!r} has no parameters"
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(n for i, n in trainable.items() if i not in expected)
    missing = sorted(n for n, p in model.named_parameters() if id(p) in expected and not p.requires_grad)
    assert not wrong, f"parameters of other adapters or of the base model are trainable: {wrong[:5]}"
    assert not missing, f"parameters of the active adapter are frozen: {missing[:5]}"


def check_bf16(model_id: str, config_kwargs: dict, atol: float) -> None:
    base, batch_fn, key = build(model_id)
    base = base.to(torch.bfloat16)
    kwargs = {**config_kwargs, "init_weights": False}
    if callable(kwargs.get("mask")):
        kwargs["mask"] = kwargs["mask"](base)
    model = get_peft_model(base, LNTuneConfig(**kwargs))
    deltas = [p for n, p in model.named_parameters() if ".lntune_" in n and p.requires_grad]
    assert deltas and all(p.dtype == torch.float32 for p in deltas), "deltas must stay fp32 on a bf16 base"
    model.train()
    batch = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch_fn(2).items()}
    out = model(**batch)
    out = out[key] if isinstance(out, dict) else getattr(out, key)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in deltas)
