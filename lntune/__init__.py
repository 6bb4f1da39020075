# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""lntune: LayerNorm tuning as a first-class PEFT method.

`import lntune` registers the "lntune" method with peft, so `peft.get_peft_model(model, LNTuneConfig(...))`,
`PeftModel.from_pretrained` and `PeftConfig.from_pretrained` work as for any built-in method.
"""

from .fisher import FisherScores, fisher_scores, select_by_fisher, summarize_selection, top_modules, warm_up_head
from .fisher.callback import FisherSelectionCallback, swap_optimizer_params
from .norms import ROLES, NormInfo, find_norms, is_norm, norm_role
from .tuner import BASE_ADAPTER, PEFT_TYPE, PRESETS, LNTuneConfig, LNTuneLayer, LNTuneModel

__version__ = "0.1.0"

__all__ = [
    "BASE_ADAPTER",
    "FisherScores",
    "FisherSelectionCallback",
    "PEFT_TYPE",
    "PRESETS",
    "ROLES",
    "LNTuneConfig",
    "LNTuneLayer",
    "LNTuneModel",
    "NormInfo",
    "find_norms",
    "fisher_scores",
    "is_norm",
    "norm_role",
    "select_by_fisher",
    "summarize_selection",
    "swap_optimizer_params",
    "top_modules",
    "warm_up_head",
]
