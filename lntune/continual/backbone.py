# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Pooled features from unmodified backbones: the one interface an LN bank needs.

A bank reads one vector per sample from its backbone: the pooled feature its classifier sees, and the same feature
from the frozen pretrained model (the *query* that picks a task). An :class:`Encoder` is a thin ``nn.Module`` around
an unmodified model that returns that vector from keyword inputs (``pixel_values=`` or ``input_ids=`` ...):

- :class:`HFVisionEncoder`: any transformers vision transformer (``ViTModel``, ``ViTForImageClassification``, DeiT ...):
  the model's own encoder (``model.base_model``, so a task head is skipped), then the final [CLS] token (after the
  final LayerNorm) or the mean of the patch tokens.
- :class:`TimmVisionEncoder`: a timm ViT: ``forward_features`` then ``forward_head(pre_logits=True)``, i.e. the model's
  own pooling (``global_pool``) and ``fc_norm``.
- :class:`HFTextEncoder`: a transformers text encoder (BERT, MiniLM, RoBERTa ...): [CLS] or the attention-masked mean
  of ``last_hidden_state`` (the native pooling of sentence-transformers' MiniLM).

Nothing is copied or re-implemented: peft wraps the norms *inside* the wrapped model, so adapters, routing and
``disable_adapter`` all act on the real backbone. :func:`as_encoder` picks the wrapper by structure.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "POOLINGS",
    "Encoder",
    "HFTextEncoder",
    "HFVisionEncoder",
    "TimmVisionEncoder",
    "as_encoder",
    "find_blocks",
    "pool_tokens",
]

POOLINGS = ("cls", "mean")
Pooling = Literal["cls", "mean"]


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    return pooling


class Encoder(nn.Module):
    """An unmodified backbone plus pooling: ``forward(**inputs)`` returns ``(batch, dim)`` features.

    Attributes:
        model (`nn.Module`): the wrapped backbone, unchanged.
        dim (`int`): feature size.
        modality (`str`): ``"image"`` or ``"text"``.
        input_names (`tuple[str, ...]`): the keyword inputs ``forward`` accepts (the first one is required).
    """

    modality: str = "image"
    input_names: tuple[str, ...] = ("pixel_values",)

    def __init__(self, model: nn.Module, dim: int) -> None:
        super().__init__()
        self.model = model
        self.dim = int(dim)

    def batch_size(self, inputs: dict[str, torch.Tensor]) -> int:
        return int(inputs[self.input_names[0]].shape[0])


class HFVisionEncoder(Encoder):
    """A transformers vision transformer: final [CLS] token (``"cls"``) or mean patch token (``"mean"``)."""

    def __init__(self, model: nn.Module, pooling: Pooling = "cls") -> None:
        super().__init__(model, dim=model.config.hidden_size)
        self.pooling = _check_pooling(pooling)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # base_model is the encoder (ViTModel) of a *ForImageClassification model and the model itself otherwise;
        # its last_hidden_state comes after the final LayerNorm
        hidden = self.model.base_model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)


class TimmVisionEncoder(Encoder):
    """A timm ViT: its own pooling and ``fc_norm`` (``forward_head(..., pre_logits=True)``), no classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, dim=model.num_features)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixel_values), pre_logits=True)


class HFTextEncoder(Encoder):
    """A transformers text encoder: [CLS] (``"cls"``) or the attention-masked mean token (``"mean"``)."""

    modality = "text"
    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: nn.Module, pooling: Pooling = "mean") -> None:
        super().__init__(model, dim=model.config.hidden_size)
        self.pooling = _check_pooling(pooling)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model.base_model(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def as_encoder(model: nn.Module, pooling: Pooling | None = None) -> Encoder:
    """Wrap ``model`` in the matching :class:`Encoder` (an ``Encoder`` is returned unchanged).

    Dispatch is structural: a timm model has ``forward_features`` and ``forward_head``; a transformers model has a
    ``config`` and a ``base_model`` whose forward takes ``pixel_values`` (vision) or ``input_ids`` (text).
    ``pooling`` defaults to ``"cls"`` for vision and ``"mean"`` for text.
    """
    if isinstance(model, Encoder):
        if pooling is not None and getattr(model, "pooling", pooling) != pooling:
            raise ValueError(f"This encoder pools with {model.pooling!r}; got pooling={pooling!r}.")
        return model
    if hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "num_features"):
        if pooling not in (None, "cls") and getattr(model, "global_pool", None) != "avg":
            raise ValueError("A timm ViT pools with its own global_pool; create it with global_pool='avg' for 'mean'.")
        return TimmVisionEncoder(model)
    base = getattr(model, "base_model", None)
    if getattr(model, "config", None) is not None and isinstance(base, nn.Module):
        params = _forward_params(base)
        if "pixel_values" in params:
            return HFVisionEncoder(model, pooling or "cls")
        if "input_ids" in params:
            return HFTextEncoder(model, pooling or "mean")
    raise TypeError(
        f"Cannot build an encoder for {type(model).__name__}: supported are transformers vision models (forward takes "
        "pixel_values), transformers text encoders (forward takes input_ids) and timm ViTs (forward_features + "
        "forward_head); or pass an lntune.continual.Encoder subclass."
    )


def find_blocks(encoder: nn.Module) -> tuple[str, nn.Module]:
    """`(name, container)` of the backbone's transformer blocks: the longest `nn.ModuleList` / `nn.Sequential` whose
    children all have one type (HF `encoder.layer`, timm `blocks`). Raises a ValueError if there is none."""
    best: tuple[str, nn.Module] | None = None
    for name, module in encoder.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ValueError(f"Found no stack of transformer blocks in {type(encoder).__name__}.")
    return best


def pool_tokens(encoder: Encoder, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The pooled token of a block's input `hidden` `(batch, tokens, dim)`, as float: [CLS] for vision (and text
    pooled with `"cls"`), the attention-masked mean for text pooled with `"mean"`."""
    if encoder.modality == "image" or getattr(encoder, "pooling", "cls") == "cls":
        return hidden[:, 0].float()
    if mask is None:
        return hidden.mean(dim=1).float()
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).float()
