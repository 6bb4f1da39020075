# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Continual learning with LayerNorm tuning: class-incremental splits, data, task-keyed LN banks, training, metrics.

``LNBank`` / ``LateSelectionLNBank`` (one pass) / ``SinglePassLNBank`` (per-layer, official) hold one lntune adapter
per task on a frozen backbone plus keys that pick the task of each sample; ``run_methods`` trains and evaluates them
(and the ``nmc`` / ``seq-ln`` / ``joint-ln`` baselines) task after task on a ``TaskStream`` described by a
``ContinualConfig``; ``save_bank`` / ``load_bank`` checkpoint them atomically. ``recipes/continual/run.py`` is the
CLI.

Modules: ``bank`` / ``late_select`` / ``single_pass`` (the banks), ``config``, ``stream`` (data streams and loaders),
``context`` (``RunContext``, the query cache, seeding), ``stages`` (keys, stage 1, stage 2, evaluation), ``methods``
(the banks task after task, ``METHODS``), ``baselines``, ``protocol`` (resume, checkpoints, summaries),
``distributed`` (several processes), ``checkpoint``, ``data``, ``splits``, ``metrics``, ``plots``, ``backbone``.
"""

from .backbone import Encoder, as_encoder
from .bank import KEY_MODES, BankOutput, LNBank
from .checkpoint import latest_checkpoint, load_bank, save_bank
from .config import ContinualConfig
from .context import RunContext
from .data import (
    ImageSource,
    TextSource,
    holdout_per_class,
    load_clinc150,
    load_image_folder,
    subsample_per_class,
    vit_transform,
)
from .late_select import LateSelectionLNBank
from .methods import METHODS, compare_key_modes, run_methods
from .metrics import accuracy_matrix_from_predictions, summarize, task_id_accuracy
from .plots import plot_accuracy_matrix
from .protocol import MethodResult
from .single_pass import SinglePassLNBank
from .splits import ClassIncrementalSplit, make_class_incremental_split
from .stream import TaskStream, image_stream, text_stream

__all__ = [
    "KEY_MODES",
    "METHODS",
    "BankOutput",
    "ClassIncrementalSplit",
    "ContinualConfig",
    "Encoder",
    "ImageSource",
    "LNBank",
    "LateSelectionLNBank",
    "MethodResult",
    "RunContext",
    "SinglePassLNBank",
    "TaskStream",
    "TextSource",
    "accuracy_matrix_from_predictions",
    "as_encoder",
    "compare_key_modes",
    "holdout_per_class",
    "image_stream",
    "latest_checkpoint",
    "load_bank",
    "load_clinc150",
    "load_image_folder",
    "make_class_incremental_split",
    "plot_accuracy_matrix",
    "run_methods",
    "save_bank",
    "subsample_per_class",
    "summarize",
    "task_id_accuracy",
    "text_stream",
    "vit_transform",
]
