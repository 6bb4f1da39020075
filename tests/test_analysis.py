# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Tests of the component-change analysis: perturb known groups of a tiny random BERT by known amounts and check
that the grouping, the numbers (against a hand computation), the claim and the written files come out right."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import transformers as tf
from torch import nn

from lntune.analysis import (
    OUTPUT_LN,
    component_changes,
    component_of,
    output_ln_changes_most,
    plot_component_changes,
    write_component_table,
)

LAYERS = 2


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=24
    )
    model = tf.BertForSequenceClassification(config)
    with torch.no_grad():  # non-trivial norm parameters (BERT initialises gains to 1 and biases to 0)
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _scale(model: nn.Module, factor: float, where) -> None:
    """Multiply every parameter whose name satisfies ``where`` by ``factor``: relative change exactly |factor - 1|."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if where(name):
                p.mul_(factor)


def _by_component(rows: list[dict]) -> dict[str, dict]:
    return {r["component"]: r for r in rows}


def test_grouping_covers_every_parameter_once() -> None:
    model = _bert()
    rows = component_changes(model, copy.deepcopy(model))
    comps = [r["component"] for r in rows]
    assert comps == [
        "embeddings",
        "embedding LayerNorm",
        "Q",
        "K",
        "V",
        "attention output dense",
        "attention LayerNorm",
        "FFN in (intermediate)",
        "FFN out (output dense)",
        OUTPUT_LN,
        "pooler",
        "head",
    ]
    assert sum(r["num_params"] for r in rows) == sum(p.numel() for p in model.parameters())
    rows_by = _by_component(rows)
    assert rows_by[OUTPUT_LN]["num_tensors"] == 2 * LAYERS and rows_by[OUTPUT_LN]["num_layers"] == LAYERS
    assert rows_by["embedding LayerNorm"]["num_tensors"] == 2 and rows_by["embedding LayerNorm"]["num_layers"] == 0
    assert all(r["relative_change"] == 0.0 for r in rows)


def test_known_group_comes_out_on_top() -> None:
    base = _bert()
    tuned = copy.deepcopy(base)
    _scale(tuned, 1.01, lambda n: True)  # everything moves by 1% ...
    _scale(
        tuned,
        1.5 / 1.01,
        lambda n: n.endswith(("output.LayerNorm.weight", "output.LayerNorm.bias")) and "attention" not in n,
    )
    _scale(tuned, 1.1 / 1.01, lambda n: ".query." in n)  # ... Q by 10%, the output LayerNorms by 50%
    rows = _by_component(component_changes(base, tuned))  # fp32 weights: ratios exact to ~1e-6
    assert rows[OUTPUT_LN]["relative_change"] == pytest.approx(0.5, rel=1e-5)
    assert rows[OUTPUT_LN]["relative_change_layer_mean"] == pytest.approx(0.5, rel=1e-5)
    assert rows["Q"]["relative_change"] == pytest.approx(0.1, rel=1e-5)
    assert rows["attention LayerNorm"]["relative_change"] == pytest.approx(0.01, rel=1e-5)
    assert rows["embeddings"]["relative_change"] == pytest.approx(0.01, rel=1e-5)
    holds, statement = output_ln_changes_most(list(rows.values()))
    assert holds and "runner-up Q" in statement


def test_values_match_a_hand_computation() -> None:
    """Different changes per layer: pooled = sqrt(sum ||dW||^2 / sum ||W||^2), layer mean = mean of per-layer ratios."""
    base = _bert()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.bert.encoder.layer[0].attention.self.key.weight.mul_(1.3)
        tuned.bert.encoder.layer[1].attention.self.key.bias.add_(0.25)
    per_layer, num, den = [], 0.0, 0.0
    for i in range(LAYERS):
        b, t = base.bert.encoder.layer[i].attention.self.key, tuned.bert.encoder.layer[i].attention.self.key
        bw, bb, tw, tb = (x.detach().double() for x in (b.weight, b.bias, t.weight, t.bias))
        d2 = float((tw - bw).pow(2).sum() + (tb - bb).pow(2).sum())
        w2 = float(bw.pow(2).sum() + bb.pow(2).sum())
        per_layer.append(math.sqrt(d2 / w2))
        num, den = num + d2, den + w2
    row = _by_component(component_changes(base, tuned))["K"]
    assert row["relative_change"] == pytest.approx(math.sqrt(num / den), rel=1e-9)
    assert row["relative_change_layer_mean"] == pytest.approx(sum(per_layer) / LAYERS, rel=1e-9)
    assert row["per_layer"] == pytest.approx(dict(enumerate(per_layer)), rel=1e-9)
    assert row["delta_norm"] == pytest.approx(math.sqrt(num), rel=1e-9)


def test_delta_rms_is_the_per_scalar_change() -> None:
    """Adding a constant c to every scalar of a group gives an RMS change of exactly c, whatever the weights' size."""
    base = _bert()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "attention.output.LayerNorm" in name:
                p.add_(0.03)
            elif ".value." in name:
                p.add_(0.01)
    rows = _by_component(component_changes(base, tuned))
    assert rows["attention LayerNorm"]["delta_rms"] == pytest.approx(0.03, rel=1e-5)
    assert rows["V"]["delta_rms"] == pytest.approx(0.01, rel=1e-5)
    assert rows[OUTPUT_LN]["delta_rms"] == 0.0
    holds, statement = output_ln_changes_most(list(rows.values()), key="delta_rms")
    assert not holds and "attention LayerNorm changes most (0.03)" in statement


def test_claim_fails_when_another_component_wins_and_ignores_the_head() -> None:
    base = _bert()
    tuned = copy.deepcopy(base)
    _scale(tuned, 3.0, lambda n: n.startswith("classifier."))  # a head that moves a lot does not count
    _scale(tuned, 1.2, lambda n: "output.LayerNorm" in n and "attention" not in n)
    holds, statement = output_ln_changes_most(component_changes(base, tuned))
    assert holds, statement
    _scale(tuned, 1.5, lambda n: "intermediate.dense" in n)
    holds, statement = output_ln_changes_most(component_changes(base, tuned))
    assert not holds
    assert statement.startswith("does not hold: FFN in (intermediate) changes most (0.5)")
    assert "ranks 2 of" in statement


def test_unknown_parameters_go_to_other_and_mismatches_fail() -> None:
    class WithExtra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _bert()
            self.temperature = nn.Parameter(torch.ones(1))

    base = WithExtra()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.temperature.mul_(2.0)
    rows = _by_component(component_changes(base, tuned))
    assert rows["other"]["num_params"] == 1 and rows["other"]["relative_change"] == pytest.approx(1.0)
    assert rows[OUTPUT_LN]["num_tensors"] == 2 * LAYERS  # norms are still found under the wrapper's prefix
    with pytest.raises(ValueError, match="different parameter names"):
        component_changes(base, _bert())


@pytest.mark.parametrize(
    "name, component",
    [
        ("bert.encoder.layer.3.attention.output.dense.weight", "attention output dense"),
        ("bert.encoder.layer.3.output.dense.bias", "FFN out (output dense)"),
        ("bert.encoder.layer.3.intermediate.dense.weight", "FFN in (intermediate)"),
        ("roberta.encoder.layer.0.attention.self.value.weight", "V"),
        ("classifier.out_proj.weight", "head"),
        ("distilbert.transformer.layer.1.attention.q_lin.weight", "Q"),
        ("distilbert.transformer.layer.1.ffn.lin2.weight", "FFN out (output dense)"),
        ("bert.embeddings.word_embeddings.weight", "embeddings"),
        ("something.else.weight", "other"),
    ],
)
def test_component_patterns(name: str, component: str) -> None:
    assert component_of(name) == component


def test_table_and_plot_are_written_atomically(tmp_path: Path) -> None:
    base = _bert()
    tuned = copy.deepcopy(base)
    _scale(tuned, 1.2, lambda n: "output.LayerNorm" in n and "attention" not in n)
    rows = component_changes(base, tuned)
    text = write_component_table(rows, tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text() == text
    assert f"| {OUTPUT_LN} | {2 * LAYERS} |" in text and text.count("\n") == len(rows) + 2
    assert "RMS Δ per scalar" in text
    plot_component_changes(rows, tmp_path / "plot.png", title="tiny BERT")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "table.md"]  # no temp files left behind
