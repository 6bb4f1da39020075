# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Multi-layer frozen queries (`query_layers`): what the query holds on HF ViT / BERT / timm, keys and LDA statistics
in the query space, the one-pass bank's selection features, checkpoints, the recipe flag, and the bad inputs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers as tf

from lntune.continual import ContinualConfig, LNBank, load_bank, save_bank
from lntune.continual.late_select import LateSelectionLNBank

from .helpers import BACKBONES, CIFAR10_DIR, load_recipe, pixel_batch, randomize, token_batch

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])


def vit3() -> torch.nn.Module:
    """A tiny random HF ViT with 3 blocks (so a late selection at block 2 can read two layers)."""
    torch.manual_seed(0)
    config = tf.ViTConfig(
        hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37
    )
    return tf.ViTForImageClassification(config).eval()


def bert3() -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = tf.BertConfig(
            hidden_size=32, vocab_size=100, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37
        )
        return tf.BertModel(config).eval()


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def test_the_query_concatenates_the_pooled_inputs_of_the_last_blocks_and_the_final_feature():
    bank = LNBank(vit3(), num_classes=4, query_layers=3)
    bank.add_task([0, 1])  # adapters exist (zero deltas): the query must still be the frozen model's
    inputs = pixel_batch(5)
    with torch.no_grad():
        out = bank.encoder.model.base_model(**inputs, output_hidden_states=True)
    expected = torch.cat([out.hidden_states[1][:, 0], out.hidden_states[2][:, 0], out.last_hidden_state[:, 0]], -1)
    torch.testing.assert_close(bank.query(**inputs), expected)
    text = LNBank(bert3(), num_classes=4, query_layers=2)
    ids = token_batch(5)
    with torch.no_grad():
        hs = text.encoder.model(**ids, output_hidden_states=True).hidden_states
    mask = ids["attention_mask"]
    torch.testing.assert_close(text.query(**ids), torch.cat([masked_mean(hs[2], mask), masked_mean(hs[3], mask)], -1))


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_the_last_part_of_a_multi_layer_query_is_the_one_layer_query(backbone):
    build, batch, _ = BACKBONES[backbone]
    one, two = LNBank(build(), num_classes=4), LNBank(build(), num_classes=4, query_layers=2)
    inputs = batch(6)
    q1, q2 = one.query(**inputs), two.query(**inputs)
    assert q2.shape == (6, 2 * one.dim) and two.query_dim == 2 * one.dim
    torch.testing.assert_close(q2[:, one.dim :], q1)
    assert not torch.allclose(q2[:, : one.dim], q1)  # the earlier layer differs


def test_keys_and_lda_statistics_live_in_the_query_space_and_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    bank = LNBank(vit3(), num_classes=4, key_mode="class", router="lda", query_layers=2)
    inputs = pixel_batch(len(LABELS))
    for t, classes in enumerate(([0, 1], [2, 3])):
        bank.add_task(classes)
        randomize(bank, t, seed=t + 1)
    queries = bank.query(**inputs)
    bank.fit_router(queries, LABELS)
    assert bank.keys[0].shape == (2, 64) and bank.statistics.dim == 64 and bank.classifier.in_features == 32
    expected = bank.class_task()[bank.statistics.predict(queries)]
    assert torch.equal(bank.select(queries), expected)
    features, tasks = bank.infer(**inputs)  # computes its own two-layer queries
    assert torch.equal(tasks, expected) and features.shape == (len(LABELS), 32)
    save_bank(bank, tmp_path / "bank")
    assert json.loads((tmp_path / "bank" / "meta.json").read_text())["bank"]["query_layers"] == 2
    loaded, _ = load_bank(tmp_path / "bank", vit3())
    assert loaded.query_layers == 2 and torch.equal(loaded.select(queries), expected)
    torch.testing.assert_close(loaded.query(**inputs), queries)


def test_the_one_pass_bank_selects_from_the_pooled_inputs_of_blocks_L_minus_k_plus_1_to_L():
    torch.manual_seed(0)
    bank = LateSelectionLNBank(vit3(), num_classes=4, selection_layer=2, query_layers=2).eval()
    for t, classes in enumerate(([0, 1], [2, 3])):
        bank.add_task(classes)
        randomize(bank, t, seed=t + 1)
    inputs = pixel_batch(len(LABELS))
    with torch.no_grad(), bank.model.disable_adapter():
        hs = bank.encoder.model.base_model(**inputs, output_hidden_states=True).hidden_states
    selection = bank.selection_features(**inputs)
    torch.testing.assert_close(selection, torch.cat([hs[1][:, 0], hs[2][:, 0]], -1))
    bank.fit_router(selection, LABELS)
    features, tasks = bank.infer(**inputs)
    assert torch.equal(tasks, bank.class_task()[bank.statistics.predict(selection)].cpu())
    torch.testing.assert_close(bank.last_queries, selection)
    torch.testing.assert_close(features, bank.routed_features(tasks, **inputs), atol=1e-5, rtol=0)


def test_bad_query_layers_are_refused_with_the_rule():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="query_layers must be a positive int"):
            LNBank(vit3(), num_classes=4, query_layers=bad)
        with pytest.raises(ValueError, match="query_layers must be a positive int"):
            ContinualConfig(query_layers=bad)
    with pytest.raises(ValueError, match="has 3 blocks: use at most 3"):
        LNBank(vit3(), num_classes=4, query_layers=4)
    with pytest.raises(ValueError, match="use query_layers <= 2"):
        LateSelectionLNBank(vit3(), num_classes=4, selection_layer=2, query_layers=3)
    bank = LNBank(vit3(), num_classes=4, router="lda", query_layers=2)
    bank.add_task([0, 1])
    with pytest.raises(ValueError, match="no class yet"):  # the router refuses to predict before any fit
        bank.select(bank.query(**pixel_batch(2)))
    with pytest.raises(ValueError, match=r"features must be \(n, 64\)"):  # a one-layer query in a two-layer space
        bank.fit_router(torch.zeros(2, 32), torch.tensor([0, 1]))


@pytest.mark.slow
def test_recipe_runs_lda_nmc_and_both_banks_on_two_layer_queries(tmp_path):
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR}")
    vit3().save_pretrained(tmp_path / "vit3")
    recipe = load_recipe()
    argv = [
        "--data", str(CIFAR10_DIR), "--model", str(tmp_path / "vit3"), "--tasks", "2", "--max_train_per_class", "4",
        "--max_test_per_class", "2", "--epochs", "1", "--batch_size", "8", "--rectify_epochs", "1", "--no_progress",
        "--method", "lda,nmc,ln-bank,ln-bank-1pass", "--router", "lda", "--prediction", "lda+head",
        "--selection_layer", "2", "--query_layers", "2", "--compare_key_modes", "1",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    metrics = recipe.main(argv)
    assert metrics["config"]["continual"]["query_layers"] == 2
    for bank in ("ln-bank", "ln-bank-1pass"):
        assert metrics["methods"][bank]["query_layers"] == 2 and metrics["methods"][bank]["task_id_acc"][0] == 1.0
    assert len(metrics["methods"]["lda"]["acc_matrix"]) == 2 and metrics["key_mode_comparison"] is not None
    again = recipe.main(argv + ["--resume"])  # every method resumes from its last checkpoint: same numbers
    assert again["methods"] == metrics["methods"]
