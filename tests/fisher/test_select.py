# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Selecting norm scalars by Fisher score, summarising the selection, plotting the scores (and the plot CLI)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from lntune.fisher import (
    FisherScores,
    layer_key,
    module_scores,
    select_by_fisher,
    summarize_selection,
    top_modules,
)

from ..models import SHARED_DATA

SST2_DIR = SHARED_DATA / "glue" / "sst2"
NAMES = [
    "bert.embeddings.LayerNorm",
    "bert.encoder.layer.0.attention.output.LayerNorm",
    "bert.encoder.layer.0.output.LayerNorm",
    "bert.encoder.layer.1.attention.output.LayerNorm",
    "bert.encoder.layer.1.output.LayerNorm",
]


def _scores(seed: int = 0, hidden: int = 6) -> FisherScores:
    gen = torch.Generator().manual_seed(seed)
    raw = {
        name: {"weight": torch.rand(hidden, generator=gen) * (i + 1), "bias": torch.rand(hidden, generator=gen)}
        for i, name in enumerate(NAMES)
    }
    roles = {n: "embedding" if "embeddings" in n else "attention" if "attention" in n else "output" for n in NAMES}
    return FisherScores(raw, 8, roles)


def _brute_force_top(scores: FisherScores, k: int, params=("weight", "bias")) -> set[tuple[str, str, int]]:
    flat = [
        (float(v), name, pname, i)
        for name in scores
        for pname in ("weight", "bias")
        if pname in params and pname in scores[name]
        for i, v in enumerate(scores[name][pname])
    ]
    flat.sort(key=lambda e: -e[0])
    return {(name, pname, i) for _, name, pname, i in flat[:k]}


def _as_set(mask) -> set[tuple[str, str, int]]:
    return {(name, pname, i) for name, per in mask.items() for pname, idx in per.items() for i in idx}


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 1.0])
def test_fraction_picks_the_global_top_scalars(fraction: float) -> None:
    scores = _scores()
    mask = select_by_fisher(scores, fraction=fraction)
    k = math.ceil(fraction * 60)
    assert _as_set(mask) == _brute_force_top(scores, k)
    for per in mask.values():
        assert set(per) == {"weight", "bias"}
        for idx in per.values():
            assert idx == sorted(idx) and all(type(i) is int for i in idx)
    assert json.loads(json.dumps(mask)) == mask


def test_default_count_and_params_restriction() -> None:
    scores = _scores()
    assert len(_as_set(select_by_fisher(scores))) == 12  # default fraction 0.2 of 60
    mask = select_by_fisher(scores, count=7, params=("bias",))
    assert _as_set(mask) == _brute_force_top(scores, 7, params=("bias",))
    assert all(set(per) == {"bias"} for per in mask.values())
    mask = select_by_fisher(scores, fraction=0.5, params=("weight",))
    assert len(_as_set(mask)) == 15 and all(set(per) == {"weight"} for per in mask.values())


def test_ties_and_zeros_are_broken_by_module_order_then_index() -> None:
    zeros = FisherScores({n: {"weight": torch.zeros(4), "bias": torch.zeros(4)} for n in NAMES[:3]}, 1, {})
    mask = select_by_fisher(zeros, count=6)
    assert mask == {NAMES[0]: {"weight": [0, 1, 2, 3], "bias": [0, 1]}}
    tied = FisherScores(
        {"a.norm": {"weight": torch.tensor([1.0, 2.0, 2.0])}, "b.norm": {"weight": torch.ones(3)}}, 1, {}
    )
    assert select_by_fisher(tied, count=3) == {"a.norm": {"weight": [0, 1, 2]}}
    assert select_by_fisher(tied, count=4) == {"a.norm": {"weight": [0, 1, 2]}, "b.norm": {"weight": [0]}}
    assert select_by_fisher(tied, count=4) == select_by_fisher(tied, count=4)


def test_module_granularity_takes_whole_modules_by_mean_score() -> None:
    scores = _scores()
    means = module_scores(scores)
    ranked = sorted(means, key=lambda n: -means[n])
    mask = select_by_fisher(scores, fraction=0.2, granularity="module")  # budget 12 = one module of 12 scalars
    assert list(mask) == [ranked[0]] and len(_as_set(mask)) == 12
    mask = select_by_fisher(scores, count=13, granularity="module")  # overshoots to cover the budget
    assert set(mask) == set(ranked[:2]) and len(_as_set(mask)) == 24
    assert mask[ranked[0]] == {"weight": list(range(6)), "bias": list(range(6))}
    mask = select_by_fisher(scores, count=6, granularity="module", params=("weight",))
    assert list(mask) == [max(means, key=lambda n: float(scores[n]["weight"].mean()))]
    assert top_modules(scores, 2) == [(n, scores.roles[n], means[n]) for n in ranked[:2]]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"fraction": 0.0}, ValueError, r"fraction must be in \(0, 1\]"),
        ({"fraction": 1.5}, ValueError, r"fraction must be in \(0, 1\]"),
        ({"fraction": float("nan")}, TypeError, "fraction"),
        ({"count": 0}, ValueError, r"count must be in \[1, 60\]"),
        ({"count": 61}, ValueError, r"count must be in \[1, 60\]"),
        ({"count": 2.5}, TypeError, "count must be an int"),
        ({"fraction": 0.1, "count": 3}, ValueError, "not both"),
        ({"granularity": "layer"}, ValueError, "granularity must be one of"),
        ({"params": ("gain",)}, ValueError, "params must be"),
    ],
)
def test_selection_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        select_by_fisher(_scores(), **kwargs)


def test_nan_and_empty_scores_are_rejected() -> None:
    bad = _scores()
    bad[NAMES[2]]["bias"][3] = math.nan
    with pytest.raises(ValueError, match=r"bias scores of 'bert.encoder.layer.0.output.LayerNorm' contain NaN"):
        select_by_fisher(bad, fraction=0.5)
    with pytest.raises(ValueError, match="no scores"):
        select_by_fisher({}, fraction=0.5)
    no_bias = FisherScores({"a.norm": {"weight": torch.ones(3)}}, 1, {})
    with pytest.raises(ValueError, match="no bias scalars"):
        select_by_fisher(no_bias, fraction=0.5, params=("bias",))


def test_summarize_selection_counts_by_layer_role_and_param() -> None:
    scores = _scores()
    mask = {
        NAMES[0]: {"weight": [0], "bias": []},
        NAMES[2]: {"weight": [0, 1, 2], "bias": [5]},
        NAMES[3]: {"weight": [], "bias": [0, 1]},
    }
    summary = summarize_selection(mask, scores)
    assert summary["selected"] == 7 and summary["total"] == 60
    assert summary["by_layer"] == {
        "embedding": {"selected": 1, "total": 12},
        "0": {"selected": 4, "total": 24},
        "1": {"selected": 2, "total": 24},
    }
    assert summary["by_role"]["output"] == {"selected": 4, "total": 24}
    assert summary["by_role"]["attention"] == {"selected": 2, "total": 24}
    assert summary["by_param"] == {"weight": {"selected": 4, "total": 30}, "bias": {"selected": 3, "total": 30}}
    assert "selected 7 of 60" in summary["table"] and "output" in summary["table"]
    with pytest.raises(ValueError, match="norms the scores do not have"):
        summarize_selection({"nope.norm": {"weight": [0]}}, scores)
    assert layer_key("model.decoder.layers.3.final_layer_norm") == "dec 3"
    assert layer_key("model.norm", "final") == "final"


def test_plot_scores_writes_a_png_atomically(tmp_path: Path) -> None:
    from lntune.fisher.plot import plot_scores

    scores = _scores()
    scores[NAMES[1]]["weight"][0] = 0.0  # zeros are floored, not -inf
    out = plot_scores(scores, tmp_path / "sub" / "fisher.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["fisher.png"]  # no temp file left behind


@pytest.mark.slow
def test_plot_cli_on_minilm_and_sst2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (SST2_DIR / "train.tsv").exists():
        pytest.skip(f"no SST-2 data at {SST2_DIR}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes" / "fisher"))
    from score_minilm import main

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = tmp_path / "fisher.png"
    rc = main(
        ["--data", str(SST2_DIR), "--num_samples", "16", "--batch_size", "8", "--out", str(out), "--no_progress"]
    )
    text = capsys.readouterr().out
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert "scored 13 norms" in text and "on 16 samples" in text
    assert "finding 'output LayerNorm matters most'" in text and "attention" in text
    assert "of 9984 norm scalars" in text


def test_per_kind_normalisation_balances_gains_and_biases():
    # biases score 10x the gains: a raw ranking takes only biases, a per-kind one takes both kinds
    g = torch.Generator().manual_seed(1)
    raw = {name: {"weight": torch.rand(50, generator=g), "bias": 10 * torch.rand(50, generator=g)} for name in NAMES}
    scores = FisherScores(raw, 8, {n: "output" for n in NAMES})
    plain = select_by_fisher(scores, fraction=0.2)
    balanced = select_by_fisher(scores, fraction=0.2, normalize="kind")
    count = lambda mask, kind: sum(len(per.get(kind, [])) for per in mask.values())  # noqa: E731
    assert count(plain, "weight") == 0 and count(plain, "bias") == 100
    assert count(balanced, "weight") + count(balanced, "bias") == 100
    assert 30 <= count(balanced, "weight") <= 70
    # same budget and deterministic; module granularity ranks by the normalised means too
    assert balanced == select_by_fisher(scores, fraction=0.2, normalize="kind")
    # module granularity ranks whole norms by the mean of their normalised scores, until the budget is covered
    kind_mean = {k: float(torch.cat([raw[n][k] for n in NAMES]).mean()) for k in ("weight", "bias")}
    norm_means = {n: float(torch.cat([raw[n][k] / kind_mean[k] for k in ("weight", "bias")]).mean()) for n in NAMES}
    expected, covered, budget = set(), 0, math.ceil(0.2 * 100 * len(NAMES))
    for name in sorted(NAMES, key=lambda n: -norm_means[n]):
        if covered >= budget:
            break
        expected.add(name)
        covered += 100
    by_module = select_by_fisher(scores, fraction=0.2, granularity="module", normalize="kind")
    assert set(by_module) == expected
    assert all(per == {"weight": list(range(50)), "bias": list(range(50))} for per in by_module.values())
    with pytest.raises(ValueError, match="normalize must be one of"):
        select_by_fisher(scores, normalize="rank")
