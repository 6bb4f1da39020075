# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Which component of a transformer changes most under full fine-tuning (the LayerNorm paper's first analysis).

ValizadehAslani & Liang (2024, "LayerNorm: A key component in parameter-efficient fine-tuning") compare a pretrained
BERT with its fully fine-tuned copy component by component and find that the output LayerNorm (the one after the
feed-forward sub-layer) changes most; that is their argument for tuning only LayerNorms. This module redoes the
comparison for any pair of models with the same parameter names:

- :func:`component_changes` groups parameters by component (norms by their :func:`lntune.find_norms` role, linear
  layers by the module-name patterns of :data:`COMPONENT_PATTERNS`, anything else under ``"other"``) and reports the
  relative change ``||w_tuned - w_base|| / ||w_base||``, pooled over the whole group and as the mean over layers of
  the per-layer values;
- :func:`write_component_table` and :func:`plot_component_changes` write it as Markdown and as a bar plot;
- :func:`output_ln_changes_most` says whether the paper's claim holds for the pair.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .io import save_figure, write_text
from .norms import find_norms

__all__ = [
    "COMPONENTS",
    "COMPONENT_PATTERNS",
    "NORM_COMPONENTS",
    "OUTPUT_LN",
    "component_changes",
    "component_of",
    "output_ln_changes_most",
    "plot_component_changes",
    "write_component_table",
]

OUTPUT_LN = "output LayerNorm"
HEAD = "head"

# Norm role (lntune.norms.ROLES) -> component.
NORM_COMPONENTS: dict[str, str] = {
    "embedding": "embedding LayerNorm",
    "attention": "attention LayerNorm",
    "output": OUTPUT_LN,
    "final": "final LayerNorm",
    "qk": "other norms",
    "other": "other norms",
}

# Component of every non-norm parameter, from its full name; the first match wins, so the more specific patterns come
# first (BERT's `attention.output.dense` before the feed-forward `output.dense`). Written for BERT-like encoders, with
# the common aliases of other families (RoBERTa/ELECTRA share BERT's names; DistilBERT q_lin/lin1, Llama q_proj/up_proj).
COMPONENT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (component, re.compile(pattern))
    for component, pattern in (
        (HEAD, r"(^|\.)(classifier|score|qa_outputs|lm_head|cls)\."),
        ("pooler", r"(^|\.)pooler\."),
        ("Q", r"(^|\.)(query|q_proj|q_lin)\.(weight|bias)$"),
        ("K", r"(^|\.)(key|k_proj|k_lin)\.(weight|bias)$"),
        ("V", r"(^|\.)(value|v_proj|v_lin)\.(weight|bias)$"),
        ("attention output dense", r"(^|\.)attention\.output\.dense\.|(^|\.)(o_proj|out_proj|out_lin)\."),
        ("FFN in (intermediate)", r"(^|\.)intermediate\.dense\.|(^|\.)(lin1|fc1|up_proj|gate_proj)\."),
        ("FFN out (output dense)", r"(^|\.)output\.dense\.|(^|\.)(lin2|fc2|down_proj)\."),
        ("embeddings", r"(^|\.)(embeddings|embed_tokens)\."),
    )
)

# Display order of the components.
COMPONENTS: tuple[str, ...] = (
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
    "final LayerNorm",
    "other norms",
    "pooler",
    HEAD,
    "other",
)

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def component_of(name: str, norm_components: dict[str, str] | None = None) -> str:
    """Component of the parameter called ``name``. ``norm_components`` maps norm parameter names to their component
    (from :func:`lntune.find_norms`); norms are looked up there first, then :data:`COMPONENT_PATTERNS`."""
    if norm_components and name in norm_components:
        return norm_components[name]
    for component, pattern in COMPONENT_PATTERNS:
        if pattern.search(name):
            return component
    return "other"


def _layer_of(name: str) -> int | None:
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def _ratio(delta_sq: float, base_sq: float) -> float:
    if base_sq == 0.0:
        return math.inf if delta_sq > 0 else 0.0
    return math.sqrt(delta_sq / base_sq)


def component_changes(base_model: nn.Module, tuned_model: nn.Module) -> list[dict[str, Any]]:
    """Relative change of each component between ``base_model`` and ``tuned_model`` (same architecture and names).

    Returns one dict per non-empty component, in :data:`COMPONENTS` order, with ``component``, ``num_tensors``,
    ``num_params``, ``num_layers``, ``base_norm`` (``||w||`` over the group), ``delta_norm`` (``||Δw||``),
    ``relative_change`` (``||Δw|| / ||w||`` pooled over every tensor of the group), ``relative_change_layer_mean``
    (the same ratio per layer, averaged over layers; equal to the pooled value for components outside numbered
    layers), ``per_layer`` (layer index -> ratio) and ``delta_rms`` (``||Δw|| / sqrt(n)``, the root-mean-square change
    of one scalar, which does not divide by the size of the pretrained weights). Weights and biases of a component are
    pooled together.

    The two measures answer different questions. Adam moves every trained scalar by roughly the learning rate per
    step whatever its size, so ``delta_rms`` is similar across components, while ``relative_change`` is small for
    LayerNorm gains (about 1) next to linear weights (about 0.05): read them together.
    """
    base = dict(base_model.named_parameters())
    tuned = dict(tuned_model.named_parameters())
    missing = sorted(set(base) ^ set(tuned))
    if missing:
        raise ValueError(
            f"base and tuned models have different parameter names ({len(missing)} differ, e.g. {missing[:4]}): "
            "compare two copies of the same architecture (unwrap or merge adapters first)."
        )
    norm_components = {}
    for info in find_norms(base_model):
        for pname in info.shapes:
            norm_components[f"{info.name}.{pname}"] = NORM_COMPONENTS[info.role]

    # per component and layer: [sum of squared deltas, sum of squared base values, tensors, params]
    sums: dict[str, dict[int | None, list[float]]] = {}
    for name, w in base.items():
        w_tuned = tuned[name]
        if w.shape != w_tuned.shape:
            raise ValueError(f"{name}: base shape {tuple(w.shape)} differs from tuned shape {tuple(w_tuned.shape)}")
        w64 = w.detach().to(torch.float64).cpu()
        delta = w_tuned.detach().to(torch.float64).cpu() - w64
        cell = sums.setdefault(component_of(name, norm_components), {}).setdefault(_layer_of(name), [0.0, 0.0, 0, 0])
        cell[0] += float(delta.pow(2).sum())
        cell[1] += float(w64.pow(2).sum())
        cell[2] += 1
        cell[3] += w.numel()

    rows = []
    for component in COMPONENTS:
        if component not in sums:
            continue
        layers = sums[component]
        delta_sq = sum(c[0] for c in layers.values())
        base_sq = sum(c[1] for c in layers.values())
        per_layer = {k: _ratio(c[0], c[1]) for k, c in sorted(layers.items(), key=lambda kv: (kv[0] is None, kv[0]))}
        numbered = [v for k, v in per_layer.items() if k is not None]
        pooled = _ratio(delta_sq, base_sq)
        rows.append(
            {
                "component": component,
                "num_tensors": int(sum(c[2] for c in layers.values())),
                "num_params": int(sum(c[3] for c in layers.values())),
                "num_layers": len(numbered),
                "base_norm": math.sqrt(base_sq),
                "delta_norm": math.sqrt(delta_sq),
                "relative_change": pooled,
                "relative_change_layer_mean": sum(numbered) / len(numbered) if numbered else pooled,
                "delta_rms": math.sqrt(delta_sq / max(sum(c[3] for c in layers.values()), 1)),
                "per_layer": per_layer,
            }
        )
    return rows


def output_ln_changes_most(rows: Sequence[dict[str, Any]], key: str = "relative_change") -> tuple[bool, str]:
    """Whether the output LayerNorm has the highest ``key`` among the non-head components, and a sentence saying so.

    ``key`` is a numeric field of the rows: ``"relative_change"`` (default), ``"relative_change_layer_mean"`` or
    ``"delta_rms"``.

    The head is left out because a new classification head starts from random weights (or is not comparable across
    tasks); every other component, the pooler included, competes.
    """
    candidates = sorted((r for r in rows if r["component"] != HEAD), key=lambda r: -r[key])
    if not candidates:
        return False, "no components to compare"
    names = [r["component"] for r in candidates]
    if OUTPUT_LN not in names:
        return False, f"does not hold: the model has no output LayerNorm (components: {', '.join(names)})"
    top = candidates[0]
    if top["component"] == OUTPUT_LN:
        runner_up = candidates[1] if len(candidates) > 1 else None
        tail = f"; runner-up {runner_up['component']} ({runner_up[key]:.3g})" if runner_up else ""
        return True, f"holds: the output LayerNorm changes most ({top[key]:.3g}){tail}"
    rank = names.index(OUTPUT_LN)
    return False, (
        f"does not hold: {top['component']} changes most ({top[key]:.3g}); the output LayerNorm ranks "
        f"{rank + 1} of {len(candidates)} ({candidates[rank][key]:.3g})"
    )


def write_component_table(rows: Sequence[dict[str, Any]], path_md: str | os.PathLike | None = None) -> str:
    """The rows as a Markdown table (ranked by pooled relative change); written to ``path_md`` if given."""
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["relative_change"])
    rank = {i: r + 1 for r, i in enumerate(order)}
    lines = [
        "| Component | Tensors | Params | ‖Δw‖/‖w‖ (pooled) | mean over layers | Rank | RMS Δ per scalar |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(rows):
        lines.append(
            f"| {row['component']} | {row['num_tensors']} | {row['num_params']:,} | {row['relative_change']:.3g} | "
            f"{row['relative_change_layer_mean']:.3g} | {rank[i]} | {row['delta_rms']:.3g} |"
        )
    text = "\n".join(lines) + "\n"
    if path_md is not None:
        write_text(path_md, text)
    return text


def plot_component_changes(rows: Sequence[dict[str, Any]], path_png: str | os.PathLike, title: str = "") -> None:
    """Bar plot of the relative change per component (pooled and mean over layers), output LayerNorm highlighted."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    names = [r["component"] for r in rows]
    pooled = [r["relative_change"] for r in rows]
    layer_mean = [r["relative_change_layer_mean"] for r in rows]
    fig = Figure(figsize=(8, 0.38 * len(rows) + 1.4))
    ax = fig.subplots()
    ys = list(range(len(rows)))
    colors = ["tab:red" if n == OUTPUT_LN else "tab:blue" for n in names]
    ax.barh([y - 0.2 for y in ys], pooled, height=0.4, color=colors, label="pooled over the group")
    ax.barh([y + 0.2 for y in ys], layer_mean, height=0.4, color=colors, alpha=0.45, label="mean over layers")
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_xlabel("relative change ‖Δw‖ / ‖w‖")
    ax.set_title(title or "relative change per component")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path_png, format="png", dpi=110)
