# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Fisher-selected LayerNorm subsets: score every norm gain/bias scalar by its diagonal Fisher, then select a subset.

``warm_up_head`` trains a new task head alone for a few steps so the scores are not taken through a random head,
``fisher_scores`` gives the per-scalar scores, ``select_by_fisher`` the JSON-ready selection, ``summarize_selection``
and ``top_modules`` describe it, and ``lntune.fisher.plot`` (imported on demand: it needs matplotlib) draws it.
"""

from lntune.fisher.callback import FisherSelectionCallback, swap_optimizer_params
from lntune.fisher.estimate import KINDS, TASKS, FisherScores, fisher_scores
from lntune.fisher.reference import fisher_scores_reference
from lntune.fisher.select import (
    NORMALIZATIONS,
    layer_key,
    module_scores,
    select_by_fisher,
    summarize_selection,
    top_modules,
)
from lntune.fisher.warmup import head_parameters, warm_up_head

__all__ = [
    "KINDS",
    "NORMALIZATIONS",
    "TASKS",
    "FisherScores",
    "FisherSelectionCallback",
    "fisher_scores",
    "fisher_scores_reference",
    "head_parameters",
    "layer_key",
    "module_scores",
    "plot_scores",
    "select_by_fisher",
    "summarize_selection",
    "swap_optimizer_params",
    "top_modules",
    "warm_up_head",
]


def __getattr__(name: str):
    if name == "plot_scores":
        from lntune.fisher.plot import plot_scores

        return plot_scores
    raise AttributeError(f"module 'lntune.fisher' has no attribute {name!r}")
