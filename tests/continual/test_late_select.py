# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The one-pass late-selection bank (frozen blocks up to L, LDA task choice there, task LNs after), the `lda+head`
prediction rule, and the bad inputs of both."""

from __future__ import annotations

import json

import pytest
import torch

from lntune.continual import ContinualConfig, LNBank, as_encoder, load_bank, save_bank
from lntune.continual.late_select import LateSelectionLNBank, default_selection_layer, find_blocks, late_norm_names
from lntune.continual.stages import lda_head_scores

from .helpers import BACKBONES, CIFAR10_DIR, load_recipe, randomize, recipe_argv, two_task_lda_bank

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])


def late_bank(backbone: str, layer: int = 1) -> tuple[LateSelectionLNBank, dict[str, torch.Tensor]]:
    """Two tasks with visibly different late LN values, the router fitted on the batch's own layer-L features."""
    torch.manual_seed(0)
    build, batch, _ = BACKBONES[backbone]
    bank = LateSelectionLNBank(build(), num_classes=4, selection_layer=layer).eval()
    for t, classes in enumerate(([0, 1], [2, 3])):
        bank.add_task(classes)
        randomize(bank, t, seed=t + 1)
    inputs = batch(len(LABELS))
    bank.fit_router(bank.selection_features(**inputs), LABELS)
    return bank, inputs


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_only_norms_of_late_blocks_and_after_them_are_adapted(backbone):
    encoder = as_encoder(BACKBONES[backbone][0]())
    blocks_name, blocks = find_blocks(encoder)
    names = late_norm_names(encoder, 1)
    assert names and all(n.startswith(f"{blocks_name}.1.") or not n.startswith(blocks_name) for n in names)
    assert not any(n.startswith(f"{blocks_name}.0.") or "embeddings" in n for n in names)
    bank, _ = late_bank(backbone)
    assert [n for n, _ in bank.lntune_layers()] == names  # exactly those are wrapped, so stage 1 trains exactly those
    assert default_selection_layer(encoder) == len(blocks) - 1


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_one_pass_equals_routing_each_row_to_the_task_lda_picks_at_layer_L(backbone):
    bank, inputs = late_bank(backbone)
    calls = []
    handles = [b.register_forward_hook(lambda *a: calls.append(1)) for b in find_blocks(bank.encoder)[1]]
    features, tasks = bank.infer(**inputs)
    for h in handles:
        h.remove()
    assert len(calls) == len(find_blocks(bank.encoder)[1])  # every block ran once: one pass
    expected = bank.class_task()[bank.statistics.predict(bank.selection_features(**inputs))].cpu()
    assert torch.equal(tasks, expected) and len(set(tasks.tolist())) == 2
    torch.testing.assert_close(features, bank.routed_features(tasks, **inputs), atol=1e-5, rtol=0)
    assert all(layer.routing is None for _, layer in bank.lntune_layers()), "routing must be cleared"


def test_selection_features_are_the_frozen_pooled_input_of_block_L():
    bank, inputs = late_bank("hf_vit")
    vit = bank.encoder.model.base_model
    with torch.no_grad(), bank.model.disable_adapter():
        hidden = vit(**inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(bank.selection_features(**inputs), hidden[1][:, 0])
    text, ids = late_bank("bert")
    with torch.no_grad(), text.model.disable_adapter():
        h = text.encoder.model(**ids, output_hidden_states=True).hidden_states[1]
    mask = ids["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(text.selection_features(**ids), (h * mask).sum(1) / mask.sum(1))  # masked mean


def test_checkpoint_round_trip_keeps_L_and_predictions(tmp_path):
    bank, inputs = late_bank("hf_vit")
    save_bank(bank, tmp_path / "bank")
    assert json.loads((tmp_path / "bank" / "meta.json").read_text())["bank"]["selection_layer"] == 1
    loaded, _ = load_bank(tmp_path / "bank", BACKBONES["hf_vit"][0]())
    assert isinstance(loaded, LateSelectionLNBank) and loaded.selection_layer == 1
    f0, t0 = bank.infer(**inputs)
    f1, t1 = loaded.infer(**inputs)
    assert torch.equal(t0, t1)
    torch.testing.assert_close(f0, f1)


def test_lda_head_scores_are_the_product_of_both_posteriors_within_the_task():
    bank, inputs = late_bank("hf_vit")
    features, tasks = bank.infer(**inputs)
    post = bank.class_log_posterior(bank.last_queries)
    torch.testing.assert_close(post.exp().sum(-1), torch.ones(len(tasks)))
    scores = lda_head_scores(bank, features, post, tasks)
    for i, t in enumerate(tasks.tolist()):
        own = bank.task_classes[t]
        assert torch.isinf(scores[i, [c for c in range(4) if c not in own]]).all()
        head = bank.classifier(features[i : i + 1])[0, own].log_softmax(-1)
        torch.testing.assert_close(scores[i, own], head + post[i, own].log_softmax(-1))


def test_bad_inputs_are_refused_with_the_rule():
    build = BACKBONES["hf_vit"][0]
    for layer in (0, 2, True, 1.0):  # the tiny ViT has 2 blocks: L must be 1
        with pytest.raises(ValueError, match=r"selection_layer must be an int in \[1, 1\]"):
            LateSelectionLNBank(build(), num_classes=4, selection_layer=layer)
    with pytest.raises(ValueError, match="router='lda', no keys"):
        LateSelectionLNBank(build(), num_classes=4, selection_layer=1, router="keys")
    bank = LateSelectionLNBank(build(), num_classes=4, selection_layer=1)
    with pytest.raises(ValueError, match="no task yet"):
        bank.infer(pixel_values=torch.zeros(2, 3, 32, 32))
    bank.add_task([0, 1])
    with pytest.raises(ValueError, match="no class yet: call update"):  # a router asked for before any fit
        bank.infer(pixel_values=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs the LDA statistics"):
        LNBank(build(), num_classes=4).class_log_posterior(torch.zeros(1, 32))
    with pytest.raises(ValueError, match="selection_layer must be None or a positive int"):
        ContinualConfig(selection_layer=0)
    with pytest.raises(ValueError, match="set router='lda'"):
        ContinualConfig(prediction="lda+head")


def test_topk_beyond_the_seen_tasks_falls_back_to_all_of_them():
    bank, inputs = two_task_lda_bank()
    queries = bank.query(**inputs)
    f_all, t_all = bank.infer(queries=queries, topk=2, **inputs)
    f_big, t_big = bank.infer(queries=queries, topk=7, **inputs)  # k is clamped to the 2 seen tasks
    assert torch.equal(t_all, t_big) and torch.equal(f_all, f_big)


def test_recipe_reports_every_prediction_rule_of_both_banks(tiny_vit, tmp_path):
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR}")
    extra = (
        "--method",
        "ln-bank,ln-bank-1pass",
        "--router",
        "lda",
        "--prediction",
        "lda+head",
        "--compare_key_modes",
        "0",
    )
    load_recipe().main(recipe_argv(tiny_vit, tmp_path, *extra))
    methods = json.loads((tmp_path / "metrics.json").read_text())["methods"]
    for name in ("ln-bank", "ln-bank-1pass"):
        assert methods[name]["prediction"] == "lda+head"
        assert sorted(methods[name]["predictions"]) == ["lda+head", "seen", "task"]
        assert methods[name]["predictions"]["lda+head"]["final_avg_acc"] == methods[name]["final_avg_acc"]
    assert methods["ln-bank-1pass"]["selection_layer"] == 1 and "final_acc_oracle_task" in methods["ln-bank-1pass"]
    assert "| ln-bank-1pass | task |" in (tmp_path / "results.md").read_text()
