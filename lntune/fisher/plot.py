# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Plot Fisher scores per layer and role (`plot_scores`), and state the "output LayerNorm matters most" finding.

The command line that scores MiniLM on real SST-2 sentences and draws this plot is `recipes/fisher/score_minilm.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lntune.fisher.select import layer_key, roles_of
from lntune.io import save_figure

ROLE_COLOURS = {
    "embedding": "#7f7f7f",
    "attention": "#1f77b4",
    "output": "#d62728",
    "final": "#2ca02c",
    "qk": "#9467bd",
    "other": "#8c564b",
}


def role_means(scores: Mapping) -> dict[str, float]:
    """Mean score per scalar of each role (weights and biases together), in role order of first appearance."""
    roles = roles_of(scores)
    sums: dict[str, list[float]] = {}
    for name, per_param in scores.items():
        acc = sums.setdefault(roles[name], [0.0, 0.0])
        for t in per_param.values():
            acc[0] += float(t.double().sum())
            acc[1] += t.numel()
    return {role: s / max(n, 1) for role, (s, n) in sums.items()}


def plot_scores(scores: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a PNG of log10 Fisher scores by layer (strip + box per layer, coloured by role) and mean score per role.

    Written atomically (`lntune.io`), so a reader never sees half a file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    roles = roles_of(scores)
    values = {
        name: np.concatenate([t.double().reshape(-1).cpu().numpy() for t in p.values()]) for name, p in scores.items()
    }
    positive = np.concatenate([v[v > 0] for v in values.values()] + [np.array([1e-30])])
    floor = max(positive.min() / 10.0, 1e-30)
    layers: list[str] = []
    for name in scores:
        key = layer_key(name, roles[name])
        if key not in layers:
            layers.append(key)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    rng = np.random.default_rng(0)
    per_layer: dict[str, list[np.ndarray]] = {key: [] for key in layers}
    layer_roles: dict[str, list[str]] = {key: [] for key in layers}
    for name in scores:
        key = layer_key(name, roles[name])
        if roles[name] not in layer_roles[key]:
            layer_roles[key].append(roles[name])
    seen_roles: list[str] = []
    for name, v in values.items():
        key, role = layer_key(name, roles[name]), roles[name]
        logv = np.log10(np.maximum(v, floor))
        per_layer[key].append(logv)
        # Each role of a layer gets its own strip side by side, so no role hides another.
        slots = layer_roles[key]
        width = 0.8 / len(slots)
        centre = layers.index(key) + (slots.index(role) - (len(slots) - 1) / 2) * width
        x = centre + rng.uniform(-0.4 * width, 0.4 * width, size=logv.size)
        label = role if role not in seen_roles else None
        seen_roles.append(role)
        ax.scatter(x, logv, s=3, alpha=0.35, color=ROLE_COLOURS.get(role, "#000000"), label=label, rasterized=True)
    ax.boxplot(
        [np.concatenate(per_layer[key]) for key in layers],
        positions=list(range(len(layers))),
        widths=0.7,
        showfliers=False,
        medianprops={"color": "black"},
    )
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 16 else 0)
    ax.set_xlabel("layer")
    ax.set_ylabel("log10 diagonal Fisher (per scalar)")
    ax.legend(title="role", markerscale=4, loc="best")
    means = role_means(scores)
    ax_bar.bar(list(means), list(means.values()), color=[ROLE_COLOURS.get(r, "#000000") for r in means])
    ax_bar.set_yscale("log")
    ax_bar.tick_params(axis="x", labelrotation=30)
    ax_bar.set_ylabel("mean Fisher per scalar")
    ax_bar.set_title("by role")
    n = getattr(scores, "num_samples", None)
    fig.suptitle(f"{title or 'Diagonal Fisher of norm scalars'}{f' ({n} samples)' if n else ''}")
    fig.tight_layout()
    try:
        save_figure(fig, path, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def output_ln_finding(scores: Mapping) -> str:
    """One line: does role ``output`` (feed-forward-side LN) have a higher mean score than role ``attention``?"""
    means = role_means(scores)
    if "output" not in means or "attention" not in means:
        return "finding 'output LayerNorm matters most': not testable (the model lacks output or attention norms)"
    out, att = means["output"], means["attention"]
    verdict = "HOLDS" if out > att else "DOES NOT HOLD"
    return (
        f"finding 'output LayerNorm matters most' {verdict}: mean Fisher output={out:.4g} vs attention={att:.4g} "
        f"(ratio {out / att if att else float('inf'):.3g})"
    )
