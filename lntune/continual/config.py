# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Every knob of a continual run in one dataclass, validated on construction (the recipe's JSON configs and flags
map onto its fields one to one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .bank import KEY_MODES, ROUTERS

__all__ = ["PREDICTIONS", "RECTIFY_MASKS", "ContinualConfig"]

RECTIFY_MASKS = ("task", "seen")
PREDICTIONS = ("seen", "task", "lda+head")


@dataclass
class ContinualConfig:
    """Every knob of a continual run (the recipe's JSON configs map onto these fields one to one).

    Args:
        epochs (`int`): stage-1 epochs per task (LN deltas + head).
        batch_size (`int`): training batch size (stage 1, keys, stage 2).
        lr (`float`): Adam learning rate of stage 1 (constant).
        lr_reference_batch (`Optional[int]`): if set, the learning rates of stage 1 and of the keys are scaled by
            `batch_size / lr_reference_batch`, as the official code does with 256 (so its "lr 0.01" runs at 0.005
            with batch 128). `None`: use `lr` as given.
        label_smoothing (`float`): label smoothing of the cross-entropy (stage 1 and 2), over the unmasked classes.
        key_epochs (`Optional[int]`): epochs of key learning (default: `epochs`, as in the official code).
        key_lr (`Optional[float]`): Adam learning rate of key learning (default: the stage-1 rate).
        key_mode (`str`): `"task"` (one key per task, the paper) or `"class"` (one key per class).
        layer_key_epochs (`int`): single-pass bank only: after stage 1, learn task `t`'s layer keys on the [CLS]
            inputs its final LN values produce (one no-grad pass over its training samples, then this many epochs of
            Adam at `key_lr`). `0` (default, the official code): the layer keys learn only jointly in stage 1.
        rectify (`bool`): run stage 2 (classifier rectification, the official `--unbiased`).
        rectify_epochs (`int`) / rectify_lr (`float`): stage-2 epochs and Adam learning rate.
        rectify_mask (`str`): classes the stage-2 logits cover: `"task"` (task `t`'s, as the official code) or
            `"seen"` (all classes seen so far).
        prediction (`str`): how a bank predicts: `"seen"`: argmax over every seen class (the official code);
            `"task"`: argmax over the classes of the task the keys selected; `"lda+head"` (LDA router only): argmax,
            within the selected task, of the head's log-softmax plus the LDA router's class log-posterior (both over
            the task's classes). Every rule a bank supports is computed and reported.
        eval_batch_size (`int`): batch size of query, feature and evaluation passes.
        seed (`int`): seeds the class order (in the recipe), the heads, the keys and each task's data order.
        num_workers (`int`): DataLoader workers.
        oracle_eval (`bool`): after the last task, also evaluate the two-pass bank with the true task's LN values.
        router (`str`): how the two-pass bank picks the task of a sample: `"keys"` (the paper: nearest key) or
            `"lda"` (the task of the class that shrunk LDA on the frozen queries predicts, :mod:`~.router`). The keys
            are learnt either way, so both routers see the very same LN values.
        router_topk (`int`): `1`: the router's task. `k > 1`: the router's `k` best tasks all run (one routed pass
            of `k` rows per sample) and the one whose classes get the highest inference-head logit wins.
        selection_layer (`Optional[int]`): one-pass bank (`ln-bank-1pass`): the block `L` at whose input the task
            is chosen (LDA on the frozen pooled token there); only the norms of blocks `L..` are adapted. `None`:
            the input of the last block (:func:`~.late_select.default_selection_layer`).
        lda_shrinkage (`Optional[float]`): covariance shrinkage of the LDA statistics (router and `lda` method):
            `None` = the OAS coefficient from the data, or a fixed value in [0, 1].
        query_layers (`int`): how many layers of the frozen model the query (keys, LDA router, `nmc` and `lda`
            baselines) reads. `1`: the encoder's pooled feature (the paper). `k > 1`: the pooled tokens entering the
            last `k - 1` blocks and that feature, concatenated (`k * dim`); for `ln-bank-1pass`, the pooled tokens
            entering blocks `L-k+1..L`. On CLINC150 / MiniLM, shrunk LDA on `k = 3` gains 2.2 points of final
            accuracy and task-id over `k = 1` (3 seeds); on split CIFAR-10 / ViT-Ti it loses 0.6
            (`results/continual/router_probe.md`).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.005
    lr_reference_batch: Optional[int] = None
    label_smoothing: float = 0.1
    key_epochs: Optional[int] = None
    key_lr: Optional[float] = None
    key_mode: str = "task"
    layer_key_epochs: int = 0
    rectify: bool = True
    rectify_epochs: int = 5
    rectify_lr: float = 0.001
    rectify_mask: str = "task"
    prediction: str = "seen"
    eval_batch_size: int = 256
    seed: int = 0
    num_workers: int = 0
    oracle_eval: bool = True
    router: str = "keys"
    router_topk: int = 1
    lda_shrinkage: Optional[float] = None
    selection_layer: Optional[int] = None
    query_layers: int = 1

    def __post_init__(self) -> None:
        if self.key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, got {self.key_mode!r}.")
        if self.rectify_mask not in RECTIFY_MASKS:
            raise ValueError(f"rectify_mask must be one of {RECTIFY_MASKS}, got {self.rectify_mask!r}.")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}.")
        if isinstance(self.router_topk, bool) or not isinstance(self.router_topk, int) or self.router_topk < 1:
            raise ValueError(f"router_topk must be a positive int, got {self.router_topk!r}.")
        if self.selection_layer is not None and (
            isinstance(self.selection_layer, bool)
            or not isinstance(self.selection_layer, int)
            or self.selection_layer < 1
        ):
            raise ValueError(f"selection_layer must be None or a positive int, got {self.selection_layer!r}.")
        if self.lda_shrinkage is not None and not 0.0 <= self.lda_shrinkage <= 1.0:
            raise ValueError(f"lda_shrinkage must be None (OAS) or lie in [0, 1], got {self.lda_shrinkage!r}.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}.")
        if self.prediction == "lda+head" and self.router != "lda":
            raise ValueError("prediction='lda+head' uses the LDA router's class posterior: set router='lda'.")
        if isinstance(self.query_layers, bool) or not isinstance(self.query_layers, int) or self.query_layers < 1:
            raise ValueError(f"query_layers must be a positive int, got {self.query_layers!r}.")
        for name in ("epochs", "batch_size", "eval_batch_size", "rectify_epochs", "layer_key_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if "epochs" in name else 1):
                raise ValueError(
                    f"{name} must be a {'non-negative' if 'epochs' in name else 'positive'} int, got {value!r}."
                )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}.")

    @property
    def stage1_lr(self) -> float:
        scale = 1.0 if self.lr_reference_batch is None else self.batch_size / self.lr_reference_batch
        return self.lr * scale

    @property
    def resolved_key_lr(self) -> float:
        return self.stage1_lr if self.key_lr is None else self.key_lr

    @property
    def resolved_key_epochs(self) -> int:
        return self.epochs if self.key_epochs is None else self.key_epochs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolved": {"stage1_lr": self.stage1_lr, "key_lr": self.resolved_key_lr}}
