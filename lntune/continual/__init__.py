# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Continual learning with LayerNorm tuning: class-incremental splits, data, task-keyed LN banks, training, metrics.

``LNBank`` / ``SinglePassLNBank`` hold one lntune adapter per task on a frozen backbone plus keys that pick the task
of each sample; ``lntune.continual.train`` trains them (and the ``nmc`` / ``seq-ln`` / ``joint-ln`` baselines) task
after task; ``save_bank`` / ``load_bank`` checkpoint them atomically. ``recipes/continual/run.py`` is the CLI.
"""

from .backbone import POOLINGS, Encoder, HFTextEncoder, HFVisionEncoder, TimmVisionEncoder, as_encoder
from .bank import KEY_MODES, BankOutput, LNBank, SinglePassLNBank, orthogonal_init
from .checkpoint import atomic_directory, latest_checkpoint, load_bank, load_checkpoint, save_bank, save_checkpoint
from .data import (
    ImageClassificationDataset,
    ImageSource,
    TextSource,
    TextSplits,
    load_clinc150,
    load_image_folder,
    subsample_per_class,
    vit_transform,
)
from .metrics import accuracy_matrix_from_predictions, summarize, task_id_accuracy
from .plots import plot_accuracy_matrix
from .splits import ClassIncrementalSplit, make_class_incremental_split, to_incremental_labels, to_original_labels
from .train import (
    METHODS,
    ContinualConfig,
    Evaluation,
    MethodResult,
    QueryCache,
    RunContext,
    TaskStream,
    compare_key_modes,
    evaluate,
    image_stream,
    learn_keys,
    rectify_classifier,
    refine_layer_keys,
    run_methods,
    text_stream,
    train_task_lns,
)

__all__ = [
    "KEY_MODES",
    "METHODS",
    "POOLINGS",
    "BankOutput",
    "ClassIncrementalSplit",
    "ContinualConfig",
    "Encoder",
    "Evaluation",
    "HFTextEncoder",
    "HFVisionEncoder",
    "ImageClassificationDataset",
    "ImageSource",
    "LNBank",
    "MethodResult",
    "QueryCache",
    "RunContext",
    "SinglePassLNBank",
    "TaskStream",
    "TextSource",
    "TextSplits",
    "TimmVisionEncoder",
    "accuracy_matrix_from_predictions",
    "as_encoder",
    "atomic_directory",
    "compare_key_modes",
    "evaluate",
    "image_stream",
    "latest_checkpoint",
    "learn_keys",
    "load_bank",
    "load_checkpoint",
    "load_clinc150",
    "load_image_folder",
    "make_class_incremental_split",
    "orthogonal_init",
    "plot_accuracy_matrix",
    "rectify_classifier",
    "refine_layer_keys",
    "run_methods",
    "save_bank",
    "save_checkpoint",
    "subsample_per_class",
    "summarize",
    "task_id_accuracy",
    "text_stream",
    "to_incremental_labels",
    "to_original_labels",
    "train_task_lns",
    "vit_transform",
]
