# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Task-keyed LN banks on tiny random backbones (HF ViT, timm ViT, BERT): growth, keys, selection, routing, I/O."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lntune.continual import LNBank, SinglePassLNBank, as_encoder, load_bank, save_bank
from lntune.continual.keys import orthogonal_init
from lntune.io import atomic_directory

from .helpers import BACKBONES, pixel_batch, randomize, token_batch

IDS = list(BACKBONES)


def make_bank(backbone: str, num_classes: int = 6, cls: type[LNBank] = LNBank, **kwargs) -> LNBank:
    return cls(BACKBONES[backbone][0](), num_classes=num_classes, **kwargs)


def three_tasks(bank: LNBank) -> LNBank:
    for t, classes in enumerate(([0, 1], [2, 3], [4, 5])):
        bank.add_task(classes)
        randomize(bank, t, seed=t + 1)
    return bank


# ---------------------------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("backbone", IDS)
def test_as_encoder_dispatches_by_structure(backbone):
    build, batch, enc_cls = BACKBONES[backbone]
    enc = as_encoder(build())
    assert type(enc) is enc_cls
    assert enc(**batch(3)).shape == (3, enc.dim)


def test_as_encoder_rejects_unknown_models():
    with pytest.raises(TypeError, match="Cannot build an encoder for Linear"):
        as_encoder(torch.nn.Linear(2, 2))


def test_text_mean_pooling_ignores_padding():
    enc = as_encoder(BACKBONES["bert"][0]())
    batch = token_batch(2)
    full = enc(**batch)[0]
    hidden = enc.model(**batch).last_hidden_state[0, :5]
    torch.testing.assert_close(full, hidden.mean(0))


# ---------------------------------------------------------------------------------------------------------- growth
@pytest.mark.parametrize("backbone", IDS)
def test_new_task_copies_previous_deltas(backbone):
    bank = make_bank(backbone)
    bank.add_task([0, 1])
    randomize(bank, 0, seed=1)
    bank.add_task([2, 3])
    before = [p.detach().clone() for p in bank.adapter_parameters(0)]
    for p0, p1 in zip(bank.adapter_parameters(0), bank.adapter_parameters(1)):
        assert torch.equal(p0, p1) and p0 is not p1
    randomize(bank, 1, seed=2)  # the copy is independent
    assert all(torch.equal(a, b) for a, b in zip(before, bank.adapter_parameters(0)))
    assert not any(p.requires_grad for p in bank.parameters()), "add_task must leave everything frozen"


@pytest.mark.parametrize("key_mode", ["task", "class"])
def test_keys_start_orthogonal_to_earlier_keys(key_mode):
    bank = make_bank("hf_vit", num_classes=9, key_mode=key_mode)
    bank.add_task([0, 1, 2])
    with torch.no_grad():  # a trained key is no longer a random direction
        bank.keys[0].add_(torch.randn_like(bank.keys[0]) * 3)
    bank.add_task([3, 4, 5])
    bank.add_task([6, 7, 8])
    keys, owner = bank.key_matrix()
    assert keys.shape[0] == (3 if key_mode == "task" else 9)
    assert owner.tolist() == ([0, 1, 2] if key_mode == "task" else [0] * 3 + [1] * 3 + [2] * 3)
    new = F.normalize(torch.cat([bank.keys[1], bank.keys[2]]), dim=-1)
    first = F.normalize(bank.keys[0], dim=-1)
    assert (new @ first.T).abs().max() < 1e-5
    gram = new @ new.T
    torch.testing.assert_close(gram, torch.eye(len(new)), atol=1e-5, rtol=0)


def test_orthogonal_init_beyond_dimension_still_unit_norm():
    v = orthogonal_init(5, 3, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(v[:3] @ v[:3].T, torch.eye(3), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("key_mode", ["task", "class"])
def test_selection_picks_the_right_task_on_separable_queries(key_mode):
    bank = make_bank("hf_vit", key_mode=key_mode)
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(6, bank.dim, generator=g), dim=-1) * 4  # one cluster per class
    labels = torch.arange(6).repeat_interleave(20)
    queries = centers[labels] + 0.3 * torch.randn(len(labels), bank.dim, generator=g)
    for t in range(3):
        bank.add_task([2 * t, 2 * t + 1])
        rows = (labels // 2) == t
        key = bank.key_parameters(t)[0].requires_grad_(True)
        opt = torch.optim.Adam([key], lr=0.05)
        for _ in range(100):
            loss = bank.key_loss(queries[rows], t, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bank.freeze()
    assert torch.equal(bank.select(queries), labels // 2)
    assert torch.equal(bank.select(queries[labels < 4], upto=1), labels[labels < 4] // 2)  # tasks 0..1 only


# ---------------------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize("backbone", IDS)
def test_routed_pass_equals_each_task_alone(backbone):
    bank = three_tasks(make_bank(backbone)).eval()
    batch = BACKBONES[backbone][1](5)
    task_ids = torch.tensor([0, 2, 1, 2, 0])
    with torch.no_grad():
        routed = bank.routed_features(task_ids, **batch)
        for i, t in enumerate(task_ids.tolist()):
            row = {k: v[i : i + 1] for k, v in batch.items()}
            alone, _ = bank.task_features(t, **row)
            torch.testing.assert_close(routed[i : i + 1], alone, atol=1e-5, rtol=1e-5)
        # and the tasks really differ, so the check above is not vacuous
        assert not torch.allclose(bank.task_features(0, **batch)[0], bank.task_features(1, **batch)[0])


@pytest.mark.parametrize("backbone", IDS)
def test_query_is_the_frozen_backbone(backbone):
    build, batch_fn, _ = BACKBONES[backbone]
    reference = as_encoder(build())
    bank = three_tasks(make_bank(backbone)).eval()
    batch = batch_fn(4)
    with torch.no_grad():
        torch.testing.assert_close(bank.query(**batch), reference(**batch), atol=1e-6, rtol=0)


def test_inference_is_two_passes_query_then_routed():
    bank = three_tasks(make_bank("hf_vit")).eval()
    batch = pixel_batch(6)
    with torch.no_grad():
        out = bank(**batch)
        expected = bank.select(bank.query(**batch))
        assert torch.equal(out.task_ids, expected)
        torch.testing.assert_close(out.features, bank.routed_features(expected, **batch))
    assert out.logits.shape == (6, 6) and torch.isfinite(out.logits).all()
    # task_logits keep only the selected task's classes: the keys pick the task, the head the class within it
    finite = torch.isfinite(out.task_logits)
    assert torch.equal(finite, bank.class_task().unsqueeze(0) == out.task_ids.unsqueeze(1))
    torch.testing.assert_close(out.task_logits[finite], out.logits[finite])


# ---------------------------------------------------------------------------------------------------------- single pass
@pytest.mark.parametrize("backbone", IDS)
def test_single_pass_rows_are_independent_of_the_batch(backbone):
    bank = three_tasks(make_bank(backbone, cls=SinglePassLNBank)).eval()
    batch = BACKBONES[backbone][1](4)
    with torch.no_grad():
        feats, tasks = bank.infer(**batch)
        per_layer = torch.stack(bank.last_selection)  # (layers, batch)
        for i in range(4):
            f, t = bank.infer(**{k: v[i : i + 1] for k, v in batch.items()})
            torch.testing.assert_close(feats[i : i + 1], f, atol=1e-5, rtol=1e-5)
            assert torch.equal(torch.stack(bank.last_selection)[:, 0], per_layer[:, i])
    assert per_layer.shape[0] == len(bank.lntune_layers())
    assert all(layer.routing is None for _, layer in bank.lntune_layers()), "hooks must clean up"


def test_single_pass_training_routes_to_the_task_and_trains_its_layer_keys():
    bank = three_tasks(make_bank("hf_vit", cls=SinglePassLNBank))
    batch = pixel_batch(3)
    for p in bank.key_parameters(1) + bank.key_parameters(0):
        p.requires_grad_(True)
    feats, key_loss = bank.task_features(1, **batch)
    with torch.no_grad():
        reference = bank.model(**batch, adapter_names=["task_1"] * 3)
    torch.testing.assert_close(feats.detach(), reference)
    key_loss.backward()
    assert all(p.grad is not None for p in bank.key_parameters(1))
    assert all(p.grad is None for p in bank.key_parameters(0))


def test_single_pass_with_one_task_equals_that_task():
    bank = make_bank("timm_vit", cls=SinglePassLNBank)
    bank.add_task([0, 1, 2])
    randomize(bank, 0, seed=3)
    batch = pixel_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(bank.infer(**batch)[0], bank.task_features(0, **batch)[0])


def test_single_pass_needs_task_keys():
    with pytest.raises(ValueError, match="key_mode must be 'task'"):
        make_bank("hf_vit", cls=SinglePassLNBank, key_mode="class")


# ---------------------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("cls", [LNBank, SinglePassLNBank])
@pytest.mark.parametrize("backbone", ["hf_vit", "bert"])
def test_save_load_round_trip(tmp_path, backbone, cls):
    key_mode = "class" if cls is LNBank else "task"
    bank = three_tasks(make_bank(backbone, cls=cls, key_mode=key_mode)).eval()
    with torch.no_grad():
        bank.classifier.weight.normal_()
    save_bank(bank, tmp_path / "bank", state={"note": [1, 2]})
    loaded, state = load_bank(tmp_path / "bank", BACKBONES[backbone][0]())
    assert type(loaded) is cls and loaded.task_classes == bank.task_classes and state == {"note": [1, 2]}
    a, b = bank.state_tensors(), loaded.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    batch = BACKBONES[backbone][1](4)
    with torch.no_grad():
        out_a, out_b = bank(**batch), loaded.eval()(**batch)
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=0, rtol=0)


def test_save_is_atomic_and_replaces_previous(tmp_path):
    bank = three_tasks(make_bank("hf_vit"))
    target = tmp_path / "ckpt"
    save_bank(bank, target)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "tensors.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no temporary folder may be left behind"


# ---------------------------------------------------------------------------------------------------------- errors
def test_task_id_out_of_range():
    bank = three_tasks(make_bank("hf_vit"))
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ValueError, match="out of range: this bank has 3 task"):
            bank.adapter_name(bad)
    with pytest.raises(ValueError, match="out of range"):
        bank.routed_features(torch.tensor([0, 5]), **pixel_batch(2))
    with pytest.raises(ValueError, match="no task yet"):
        make_bank("hf_vit").select(torch.randn(2, 32))


def test_classes_repeated_across_tasks_or_empty_task():
    bank = make_bank("hf_vit")
    bank.add_task([0, 1])
    with pytest.raises(ValueError, match=r"Classes \[1\] already belong to task 0"):
        bank.add_task([1, 2])
    with pytest.raises(ValueError, match="Task 1 is empty"):
        bank.add_task([])
    with pytest.raises(ValueError, match="outside"):
        bank.add_task([6])
    with pytest.raises(ValueError, match="twice"):
        bank.add_task([2, 2])
    assert bank.num_tasks == 1, "a rejected task must leave the bank unchanged"


def test_keys_and_adapters_disagree(tmp_path):
    bank = three_tasks(make_bank("hf_vit"))
    save_bank(bank, tmp_path / "bank")
    tensors = load_file(str(tmp_path / "bank" / "tensors.safetensors"))
    del tensors["keys.2"]
    save_file(tensors, str(tmp_path / "bank" / "tensors.safetensors"))
    with pytest.raises(ValueError, match="3 adapter\\(s\\) but 2 key set\\(s\\)"):
        load_bank(tmp_path / "bank", BACKBONES["hf_vit"][0]())
    # in memory too: a bank edited by hand is refused before it routes anything
    bank.keys.append(torch.nn.Parameter(torch.randn(1, bank.dim)))
    with pytest.raises(ValueError, match="3 adapter\\(s\\), 4 key set\\(s\\) and 3 task\\(s\\)"):
        bank.select(torch.randn(2, bank.dim))


def test_manifest_with_more_tasks_than_saved_tensors(tmp_path):
    bank = three_tasks(make_bank("hf_vit", num_classes=8))
    save_bank(bank, tmp_path / "bank")
    meta_path = tmp_path / "bank" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["bank"]["task_classes"].append([6, 7])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not match the bank \(4 task\(s\)\): missing"):
        load_bank(tmp_path / "bank", BACKBONES["hf_vit"][0]())
