# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""lntune: LayerNorm tuning as a first-class PEFT method.

`import lntune` registers the "lntune" method with peft, so `peft.get_peft_model(model, LNTuneConfig(...))`,
`PeftModel.from_pretrained` and `PeftConfig.from_pretrained` work as for any built-in method.
"""

# The oldest peft lntune runs on (pyproject.toml declares the same range; `make test-compat` runs the tuner tests on it).
MIN_PEFT_VERSION = "0.18"


def _check_peft_version() -> None:
    """Fail at `import lntune`, with the fix, on a peft too old to register a third-party method the way lntune does."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version("peft")
    except PackageNotFoundError:
        found = None
    if found is None or Version(found) < Version(MIN_PEFT_VERSION):
        have = "peft is not installed" if found is None else f"peft {found} is installed"
        raise ImportError(
            f"lntune needs peft >= {MIN_PEFT_VERSION}, but {have}. Fix: pip install 'peft>={MIN_PEFT_VERSION}'"
        )


_check_peft_version()  # before any import of peft, so an old peft fails here and not in some peft internals

from .fisher import FisherScores, fisher_scores, select_by_fisher, summarize_selection, top_modules, warm_up_head  # noqa: E402
from .fisher.callback import FisherSelectionCallback, swap_optimizer_params  # noqa: E402
from .heads import init_head_bias  # noqa: E402
from .norms import ROLES, NormInfo, find_norms, is_norm, norm_role  # noqa: E402
from .tuner import BASE_ADAPTER, PEFT_TYPE, PRESETS, LNTuneConfig, LNTuneLayer, LNTuneModel  # noqa: E402

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
    "init_head_bias",
    "is_norm",
    "norm_role",
    "select_by_fisher",
    "summarize_selection",
    "swap_optimizer_params",
    "top_modules",
    "warm_up_head",
]
