# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""GLUE data (local TSVs or the Hub) and metrics that work offline, for the GLUE recipes."""

from .data import TASKS, GlueTask, load_glue, load_glue_from_hub, normalize_task, task_dir
from .metric import glue_metric, load_glue_metric

__all__ = [
    "TASKS",
    "GlueTask",
    "glue_metric",
    "load_glue",
    "load_glue_from_hub",
    "load_glue_metric",
    "normalize_task",
    "task_dir",
]
