# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Pick the norm scalars (or whole norms) with the largest diagonal Fisher, and summarise what was picked.

The selection is a plain ``{norm name: {"weight": [indices], "bias": [indices]}}`` dict so it can be stored in an
adapter config as JSON. Ranking is deterministic: a stable sort on ``-score`` over the scalars laid out in module order
(for each norm its weight, then its bias, each by index), so ties and zeros go to the earlier module / lower index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lntune.norms import norm_role

GRANULARITIES = ("scalar", "module")
NORMALIZATIONS = ("none", "kind")
_PARAM_NAMES = ("weight", "bias")
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().double().cpu().reshape(-1).numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _flatten(scores: Mapping, params: Sequence[str]) -> list[tuple[str, str, np.ndarray]]:
    """(norm name, param name, flat scores) in module order, only for the allowed param kinds."""
    if not isinstance(scores, Mapping) or len(scores) == 0:
        raise ValueError("select_by_fisher: no scores given (empty mapping); run fisher_scores() first")
    unknown = set(params) - set(_PARAM_NAMES)
    if unknown or not params:
        raise ValueError(f"params must be a non-empty subset of {_PARAM_NAMES}, got {tuple(params)!r}")
    entries = []
    for name, per_param in scores.items():
        for pname in _PARAM_NAMES:
            if pname in params and pname in per_param:
                values = _as_array(per_param[pname])
                if np.isnan(values).any():
                    raise ValueError(f"select_by_fisher: the {pname} scores of {name!r} contain NaN")
                entries.append((name, pname, values))
    if not entries or sum(v.size for _, _, v in entries) == 0:
        raise ValueError(f"select_by_fisher: the scores hold no {'/'.join(params)} scalars to select from")
    return entries


def _normalize_per_kind(entries: list[tuple[str, str, np.ndarray]]) -> list[tuple[str, str, np.ndarray]]:
    """Divide each kind's (weight / bias) scores by that kind's mean score; an all-zero kind stays zero."""
    means = {}
    for kind in _PARAM_NAMES:
        values = [v for _, pname, v in entries if pname == kind]
        if values:
            means[kind] = float(np.concatenate(values).mean())
    return [(name, pname, v / means[pname] if means[pname] > 0 else v) for name, pname, v in entries]


def _budget(fraction: float | None, count: int | None, total: int) -> int:
    """Number of scalars to select: ``ceil(fraction * total)`` (at least 1) or ``count``."""
    if fraction is not None and count is not None:
        raise ValueError("select_by_fisher: give fraction or count, not both")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"count must be an int, got {count!r}")
        if count <= 0 or count > total:
            raise ValueError(f"count must be in [1, {total}] (the number of selectable scalars), got {count}")
        return int(count)
    fraction = 0.2 if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or math.isnan(fraction):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(total, math.ceil(fraction * total - 1e-9)))


def module_scores(scores: Mapping, params: Sequence[str] = _PARAM_NAMES) -> dict[str, float]:
    """Mean Fisher score of each norm over its (allowed) scalars, in module order."""
    sums: dict[str, list[float]] = {}
    for name, _, values in _flatten(scores, params):
        acc = sums.setdefault(name, [0.0, 0.0])
        acc[0] += float(values.sum())
        acc[1] += values.size
    return {name: (s / n if n else 0.0) for name, (s, n) in sums.items()}


def roles_of(scores: Mapping) -> dict[str, str]:
    """Role of each scored norm: from ``scores.roles`` when present, else from its name."""
    roles = getattr(scores, "roles", None) or {}
    return {name: roles.get(name) or norm_role(name) for name in scores}


def top_modules(scores: Mapping, k: int = 10, params: Sequence[str] = _PARAM_NAMES) -> list[tuple[str, str, float]]:
    """The ``k`` norms with the highest mean score, as ``(name, role, mean score)``, best first (stable on ties)."""
    roles = roles_of(scores)
    ranked = sorted(module_scores(scores, params).items(), key=lambda item: -item[1])
    return [(name, roles[name], score) for name, score in ranked[: max(k, 0)]]


def select_by_fisher(
    scores: Mapping,
    fraction: float | None = None,
    count: int | None = None,
    granularity: str = "scalar",
    params: Sequence[str] = _PARAM_NAMES,
    normalize: str = "none",
) -> dict[str, dict[str, list[int]]]:
    """Indices of the norm scalars to tune, chosen by diagonal Fisher score.

    The budget is always in scalars: ``ceil(fraction * N)`` (``fraction`` in (0, 1], default 0.2 when neither is given)
    or ``count`` in [1, N], N being the number of scalars of the allowed ``params`` kinds. ``granularity="scalar"``
    takes the top-budget scalars globally; ``granularity="module"`` ranks whole norms by their mean score and takes
    them in that order until at least the budget is covered (so it may overshoot by part of one norm).

    Returns ``{norm name: {"weight": sorted indices, "bias": sorted indices}}`` with only the norms that got at least
    one scalar, and for those a key for every allowed param kind the norm has (possibly an empty list); JSON-ready.

    ``normalize="kind"`` divides every score by the mean score of its kind (all gains, all biases) before ranking.
    Raw bias scores are typically several times larger than gain scores (a bias gradient is the sum of the output
    gradients, a gain's is weighted by the normalised input), so a raw ranking picks mostly biases; per-kind
    normalisation lets gains and biases compete on their relative importance instead.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    entries = _flatten(scores, params)
    if normalize == "kind":
        entries = _normalize_per_kind(entries)
    total = sum(values.size for _, _, values in entries)
    budget = _budget(fraction, count, total)
    chosen: dict[tuple[str, str], np.ndarray] = {}
    if granularity == "scalar":
        flat = np.concatenate([values for _, _, values in entries])
        order = np.argsort(-flat, kind="stable")[:budget]
        offsets = np.cumsum([0] + [values.size for _, _, values in entries])
        owner = np.searchsorted(offsets, order, side="right") - 1
        for e, (name, pname, _) in enumerate(entries):
            picked = order[owner == e] - offsets[e]
            if picked.size:
                chosen[(name, pname)] = np.sort(picked)
    else:
        sizes: dict[str, int] = {}
        sums: dict[str, float] = {}
        for name, _, values in entries:
            sizes[name] = sizes.get(name, 0) + values.size
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        means = {name: sums[name] / sizes[name] if sizes[name] else 0.0 for name in sizes}
        covered = 0
        picked_modules = set()
        for name, _ in sorted(means.items(), key=lambda item: -item[1]):
            if covered >= budget:
                break
            picked_modules.add(name)
            covered += sizes[name]
        for name, pname, values in entries:
            if name in picked_modules:
                chosen[(name, pname)] = np.arange(values.size)
    mask: dict[str, dict[str, list[int]]] = {}
    names_chosen = {name for name, _ in chosen}
    for name, pname, _ in entries:
        if name in names_chosen:
            mask.setdefault(name, {})[pname] = [int(i) for i in chosen.get((name, pname), [])]
    return mask


def layer_key(name: str, role: str | None = None) -> str:
    """Block a norm belongs to: its first numeric path component (``"dec 3"`` inside a decoder), else its role."""
    match = _LAYER_INDEX.search(name)
    if match is None:
        return role or norm_role(name)
    prefix = "dec " if "decoder" in name[: match.start()] else ""
    return f"{prefix}{match.group(1)}"


def summarize_selection(mask: Mapping[str, Mapping[str, Sequence[int]]], scores: Mapping) -> dict[str, Any]:
    """How many scalars ``mask`` picks per layer, per role and per param kind, against how many there are.

    Returns ``{"selected", "total", "by_layer", "by_role", "by_param"}`` (each ``by_*`` maps a key to
    ``{"selected": n, "total": n}``) plus ``"table"``, the same as aligned text.
    """
    roles = roles_of(scores)
    unknown = [name for name in mask if name not in scores]
    if unknown:
        raise ValueError(f"summarize_selection: the mask names norms the scores do not have: {unknown[:5]}")
    groups: dict[str, dict[str, dict[str, int]]] = {"by_layer": {}, "by_role": {}, "by_param": {}}
    selected = total = 0
    for name, per_param in scores.items():
        role = roles[name]
        for pname in _PARAM_NAMES:
            if pname not in per_param:
                continue
            n_total = _as_array(per_param[pname]).size
            n_sel = len(mask.get(name, {}).get(pname, []))
            selected += n_sel
            total += n_total
            for group, key in (("by_layer", layer_key(name, role)), ("by_role", role), ("by_param", pname)):
                cell = groups[group].setdefault(key, {"selected": 0, "total": 0})
                cell["selected"] += n_sel
                cell["total"] += n_total
    lines = [f"selected {selected} of {total} norm scalars ({100.0 * selected / max(total, 1):.1f}%)"]
    for group, title in (("by_layer", "layer"), ("by_role", "role"), ("by_param", "param")):
        lines.append(f"{title:<12} {'selected':>9} {'total':>9} {'share':>7}")
        for key, cell in groups[group].items():
            share = 100.0 * cell["selected"] / max(cell["total"], 1)
            lines.append(f"  {key:<10} {cell['selected']:>9} {cell['total']:>9} {share:>6.1f}%")
    return {"selected": selected, "total": total, **groups, "table": "\n".join(lines)}


__all__ = [
    "GRANULARITIES",
    "layer_key",
    "module_scores",
    "roles_of",
    "select_by_fisher",
    "summarize_selection",
    "top_modules",
]
