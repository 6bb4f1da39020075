# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""GLUE metrics without the Hub: a plain function and a local ``evaluate`` module with the Hub metric's interface.

``evaluate.load("glue", task)`` downloads a script from the Hub, which fails offline. :func:`load_glue_metric`
loads the same metric from the script shipped in ``lntune/glue/glue_metric/`` instead; it accepts the same config
names and returns the same keys (sst2/mnli*/qnli/rte/wnli/hans: ``accuracy``; mrpc/qqp: ``accuracy``, ``f1``;
cola: ``matthews_correlation``; stsb: ``pearson``, ``spearmanr``). Both go through :func:`glue_metric`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

__all__ = ["METRIC_CONFIGS", "METRIC_SCRIPT_DIR", "glue_metric", "load_glue_metric", "metric_config"]

# Directory holding ``glue_metric.py``; evaluate loads a local script from a directory named like the script.
METRIC_SCRIPT_DIR = Path(__file__).resolve().parent / "glue_metric"

# Config name -> returned keys; the same config names as the Hub ``glue`` metric.
_ACCURACY = ("accuracy",)
METRIC_CONFIGS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": _ACCURACY,
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": _ACCURACY,
    "mnli_matched": _ACCURACY,
    "mnli_mismatched": _ACCURACY,
    "qnli": _ACCURACY,
    "rte": _ACCURACY,
    "wnli": _ACCURACY,
    "hans": _ACCURACY,
}


def metric_config(task: str) -> str:
    """Canonical metric config name (``"SST-2"`` -> ``"sst2"``, ``"mnli-mm"`` -> ``"mnli_mismatched"``).

    Raises ``ValueError`` listing the known config names.
    """
    key = str(task).strip().lower().replace("-", "_")
    key = {"sst_2": "sst2", "sts_b": "stsb", "mnli_m": "mnli_matched", "mnli_mm": "mnli_mismatched"}.get(key, key)
    if key not in METRIC_CONFIGS:
        raise ValueError(f"Unknown GLUE metric config {task!r}. Known configs: {', '.join(METRIC_CONFIGS)}.")
    return key


def glue_metric(task: str, predictions: Sequence[Any] | np.ndarray, references: Sequence[Any] | np.ndarray) -> dict:
    """Compute the GLUE metric(s) of ``task`` for class-id (or, for STS-B, score) predictions.

    Same results as the Hub ``glue`` metric: accuracy, binary F1 with positive class 1 (mrpc, qqp), Matthews
    correlation (cola), Pearson and Spearman correlation (stsb). Values are Python floats. Predictions must be
    1-D: pass ``logits.argmax(-1)`` for classification and the squeezed score for STS-B.
    """
    config = metric_config(task)
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    if preds.ndim != 1 or refs.ndim != 1:
        raise ValueError(
            f"predictions and references must be 1-D, got shapes {preds.shape} and {refs.shape}; "
            "for classification pass class ids (logits.argmax(-1)), for stsb the squeezed scores."
        )
    if len(preds) != len(refs):
        raise ValueError(f"predictions ({len(preds)}) and references ({len(refs)}) differ in length.")
    if len(preds) == 0:
        raise ValueError("predictions and references are empty.")
    if config == "stsb":
        preds, refs = preds.astype(np.float64), refs.astype(np.float64)
        return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}
    if config == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
    accuracy = float((preds == refs).mean())
    if config in ("mrpc", "qqp"):
        return {"accuracy": accuracy, "f1": float(f1_score(y_true=refs, y_pred=preds))}
    return {"accuracy": accuracy}


def load_glue_metric(task: str, **load_kwargs: Any) -> Any:
    """Load the local GLUE ``evaluate`` module for ``task``; a drop-in for ``evaluate.load("glue", task)``.

    Works offline (``HF_HUB_OFFLINE=1``): evaluate copies ``glue_metric/glue_metric.py`` into its modules cache
    and imports it, with no Hub access. Extra keyword arguments (``keep_in_memory``, ``experiment_id``,
    ``num_process``, ...) go to ``evaluate.load``.
    """
    import evaluate  # deferred: importing evaluate is slow and only needed here

    return evaluate.load(str(METRIC_SCRIPT_DIR), config_name=metric_config(task), **load_kwargs)
