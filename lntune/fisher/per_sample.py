# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Diagonal Fisher information of every norm gain and bias scalar, from exact per-sample gradients.

The diagonal Fisher of a parameter ``theta`` is ``E_x E_y [(d log p(y|x) / d theta)^2]``: the mean over samples of the
*squared per-sample* gradient, which a plain batched backward (it returns the *sum* of the per-sample gradients) cannot
give. For norm parameters the per-sample gradients are cheap to get exactly in the same batched backward: a norm
computes ``y = s(w) * xhat + b`` with ``s(w)`` equal to ``w`` (LayerNorm, RMSNorm, T5/Llama RMSNorm) or ``1 + w``
(Gemma), so ``dy/dw = xhat_eff`` and ``dy/db = 1``. A forward hook on every norm keeps its input ``x`` and puts a
tensor hook on its output ``y``; when backward reaches ``y`` the hook gets ``g = dL/dy`` and reduces
``g * xhat_eff`` (and ``g``) over every position of each sample. ``xhat_eff`` is recomputed there from ``x``: by the
functional norm for the torch classes, and for any other class as ``f(w=1, b=0)(x) - f(w=0, b=0)(x)`` (valid because
the output is affine in ``(w, b)``; ``tests/fisher`` checks that for every supported class).

These hooks are :class:`PerSampleCollector`; :mod:`lntune.fisher.reference` computes the same numbers one sample
at a time with plain autograd, to test them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lntune.fisher.batches import attention_mask_of, base_of, seq_len
from lntune.norms import NormInfo

PARAM_NAMES = ("weight", "bias")


def fast_slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``dy/dw`` by the functional form of the stock torch norms (one call); None for other classes."""
    forward = type(module).forward
    if isinstance(module, nn.LayerNorm) and forward is nn.LayerNorm.forward:
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    if isinstance(module, nn.GroupNorm) and forward is nn.GroupNorm.forward:
        return F.group_norm(x, module.num_groups, None, None, module.eps)
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(module, rms) and forward is rms.forward:
        return F.rms_norm(x, module.normalized_shape, None, module.eps)
    return None


def affine_slope(module: nn.Module, x: torch.Tensor, *, zero_offset: bool = False) -> torch.Tensor:
    """``dy/dw`` of a norm whose output is affine in its parameters: ``f(w=1, b=0)(x) - f(w=0, b=0)(x)``.

    Generic over the norm class (``torch.func.functional_call``); ``zero_offset=True`` skips the second call for norms
    known to give 0 at ``w=0, b=0`` (``y = w * xhat``).
    """
    weight = module.weight
    ones = torch.ones_like(weight)
    params = {"weight": ones}
    if isinstance(getattr(module, "bias", None), nn.Parameter):
        params["bias"] = torch.zeros_like(module.bias)
    with torch.no_grad():
        y1 = torch.func.functional_call(module, params, (x,))
        if zero_offset:
            return y1
        params["weight"] = torch.zeros_like(weight)
        return y1 - torch.func.functional_call(module, params, (x,))


_CHANNELS_FIRST = ("channels_first", "NCHW", "NCL", "NCDHW")

_CHANNELS_LAST = ("channels_last", "NHWC", "NLC", "NDHWC")


def norm_channel_dim(module: nn.Module, ndim: int) -> int:
    """Which dim of an ``ndim``-dim norm output its 1-D gain and bias scale, from the norm's definition.

    A ``data_format`` attribute decides (timm/HF ConvNeXt ``LayerNorm``: ``"channels_first"`` or ``"channels_last"``);
    ``GroupNorm`` and the ``*2d`` norm classes (timm ``LayerNorm2d``, ``RmsNorm2d``) are channels-first (dim 1);
    everything else normalises the last dim (``nn.LayerNorm``, ``RMSNorm``, the HF/timm RMS norms). The sizes of the
    output are never consulted: a channel count equal to a spatial size would make that a guess.
    """
    fmt = getattr(module, "data_format", None)
    if isinstance(fmt, str) and fmt in _CHANNELS_FIRST:
        return 1
    if isinstance(fmt, str) and fmt in _CHANNELS_LAST:
        return ndim - 1
    if isinstance(module, nn.GroupNorm) or type(module).__name__.lower().endswith("2d"):
        return 1 if ndim > 1 else 0
    return ndim - 1


class PerSampleCollector:
    """Hooks every norm and accumulates its per-sample parameter gradients, batch by batch."""

    def __init__(self, norms: list[NormInfo], device: torch.device, stacks: dict[str, str] | None = None) -> None:
        self.norms = norms
        # which inputs each norm sees: "encoder"/"decoder" in an encoder-decoder model, else "main"
        self.stacks = stacks or {}
        # One flat fp64 accumulator; ``sums[name][param]`` are views into it (one add and one all-reduce per batch).
        self.layout = [
            (info.name, pname, getattr(info.module, pname).shape)
            for info in norms
            for pname in PARAM_NAMES
            if isinstance(getattr(info.module, pname, None), nn.Parameter)
        ]
        self.flat = torch.zeros(
            sum(math.prod(shape) for _, _, shape in self.layout), dtype=torch.float64, device=device
        )
        self.sums: dict[str, dict[str, torch.Tensor]] = {info.name: {} for info in norms}
        offset = 0
        for name, pname, shape in self.layout:
            numel = math.prod(shape)
            self.sums[name][pname] = self.flat[offset : offset + numel].view(shape)
            offset += numel
        self.calls = {info.name: 0 for info in norms}
        self._zero_offset: dict[int, bool] = {}
        self._batch: dict[str, dict[str, torch.Tensor]] = {}
        self._layouts: dict[str, tuple[int | None, torch.Tensor | None]] = {}
        self._size = 0
        self._handles: list[Any] = []

    def attach(self) -> None:
        for info in self.norms:
            # hook what the model calls (an lntune wrapper computes the norm without calling its base module's
            # forward); the slope and shapes still come from the norm module itself
            self._handles.append(info.called.register_forward_hook(self._make_forward_hook(info.name, info.module)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin(self, size: int, layouts: dict[str, tuple[int | None, torch.Tensor | None]]) -> None:
        """Start a batch of ``size`` samples; ``layouts[stack] = (token count, padding mask [B, T] or None)``."""
        self._batch = {}
        self._layouts = {k: (t, None if m is None else m.to(torch.float32)) for k, (t, m) in layouts.items()}
        self._size = size

    def _make_forward_hook(self, name: str, module: nn.Module):
        def hook(called: nn.Module, args: tuple, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad or not args:
                return
            self.calls[name] += 1
            x = args[0]
            output.register_hook(lambda grad: self._on_grad(name, module, x, grad))

        return hook

    def _slope(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        slope = fast_slope(module, x)
        if slope is not None:
            return slope
        key = id(module)
        if key not in self._zero_offset:
            # First call: both evaluations; remember whether the offset term f(w=0, b=0) vanishes (y = w * xhat).
            slope = affine_slope(module, x)
            params = {"weight": torch.zeros_like(module.weight)}
            if isinstance(getattr(module, "bias", None), nn.Parameter):
                params["bias"] = torch.zeros_like(module.bias)
            with torch.no_grad():
                offset = torch.func.functional_call(module, params, (x,))
            self._zero_offset[key] = bool((offset == 0).all())
            return slope
        return affine_slope(module, x, zero_offset=self._zero_offset[key])

    def _per_sample(self, name: str, grad: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Give ``grad`` and ``slope`` the batch as their first dim: a norm that sees flattened rows (batch x tokens,
        hidden) gets them reshaped to (batch, tokens, hidden), the token count read from the model's inputs."""
        size = self._size
        lead = grad.shape[0]
        if lead == size:
            return grad, slope
        tokens, _ = self._layouts.get(self.stacks.get(name, "main"), (None, None))
        if tokens is not None and lead == size * tokens:
            return grad.unflatten(0, (size, tokens)), slope.unflatten(0, (size, tokens))
        seen = "no token dim in the inputs" if tokens is None else f"{size} x {tokens} tokens = {size * tokens}"
        raise ValueError(
            f"fisher_scores: norm {name!r} output has leading dim {lead}, which is neither the batch size {size} nor "
            f"batch x tokens ({seen}), so its rows cannot be mapped to samples; per-sample gradients need the norm "
            "input to be [batch, ...] or flattened [batch * tokens, ...] of the model's input tokens"
        )

    def _on_grad(self, name: str, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        with torch.no_grad():
            size = self._size
            weight = module.weight
            numel = weight.numel()
            g, slope = self._per_sample(name, grad.float(), self._slope(module, x).float())
            flat_rows = g.dim() != grad.dim()
            if weight.dim() == 1:
                cdim = norm_channel_dim(module, grad.dim()) + int(flat_rows)
                if g.shape[cdim] != numel:
                    raise ValueError(
                        f"fisher_scores: norm {name!r} ({type(module).__name__}) has {numel} parameters per kind but "
                        f"its output has {g.shape[cdim]} entries along dim {cdim} (output shape {tuple(grad.shape)}), "
                        "the dim its definition scales; give the norm a data_format attribute ('channels_first' or "
                        "'channels_last') if it permutes its input"
                    )
            else:
                cdim = g.dim() - weight.dim()
            # padding positions of [batch, tokens, hidden] outputs are left out (mask of this norm's stack)
            _, mask = self._layouts.get(self.stacks.get(name, "main"), (None, None))
            apply_mask = mask is not None and g.dim() == 3 and cdim == 2 and tuple(g.shape[:2]) == tuple(mask.shape)
            if cdim != g.dim() - 1 and weight.dim() == 1:
                g, slope = g.movedim(cdim, -1), slope.movedim(cdim, -1)
            g = g.reshape(size, -1, numel)
            slope = slope.reshape(size, -1, numel)
            if apply_mask:
                m = mask.to(g.device).unsqueeze(1)  # [B, 1, T]: the reduction over positions is a batched matmul
                per_w = torch.bmm(m, g * slope).squeeze(1)
                per_b = torch.bmm(m, g).squeeze(1) if "bias" in self.sums[name] else None
            else:
                per_w = (g * slope).sum(1)
                per_b = g.sum(1) if "bias" in self.sums[name] else None
            acc = self._batch.get(name)
            if acc is None:
                acc = self._batch[name] = {}
                acc["weight"] = per_w.reshape(size, *weight.shape)
                if per_b is not None:
                    acc["bias"] = per_b.reshape(size, *weight.shape)
            else:  # a norm called more than once per forward: per-sample gradients add up before squaring
                acc["weight"] += per_w.reshape(size, *weight.shape)
                if per_b is not None:
                    acc["bias"] += per_b.reshape(size, *weight.shape)

    def end(self, where: str) -> None:
        """Square and accumulate this batch's per-sample gradients; a non-finite one raises, naming its norm."""
        batch, self._batch = self._batch, {}
        pieces = [batch.get(name, {}).get(pname) for name, pname, _ in self.layout]
        if all(piece is not None for piece in pieces):  # usual case: every norm ran; one cat, one reduction
            sq = (
                torch.cat([piece.reshape(self._size, -1) for piece in pieces], dim=1)
                .square()
                .sum(0, dtype=torch.float64)
            )
            if bool(torch.isfinite(sq.sum())):
                self.flat += sq
                return
        else:
            sqs = [None if piece is None else piece.square().sum(0, dtype=torch.float64) for piece in pieces]
            present = [t.sum() for t in sqs if t is not None]
            if not present or bool(torch.isfinite(torch.stack(present).sum())):
                for (name, pname, _), sq in zip(self.layout, sqs):
                    if sq is not None:
                        self.sums[name][pname] += sq
                return
        bad = [
            f"{name}.{pname}"
            for (name, pname, _), piece in zip(self.layout, pieces)
            if piece is not None and not bool(torch.isfinite(piece).all())
        ]
        raise FloatingPointError(
            f"fisher_scores: {where} gave non-finite per-sample gradients at norm {bad[0]!r}"
            f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; check the inputs/labels, that norm's "
            "parameters and the model's dtype"
        )


def norm_stacks(model: nn.Module, norms: list[NormInfo]) -> dict[str, str]:
    """``"encoder"`` / ``"decoder"`` for each norm of an encoder-decoder model (by module membership)."""
    base = base_of(model)
    encoder = {id(m) for m in base.get_encoder().modules()}
    decoder = {id(m) for m in base.get_decoder().modules()}
    stacks = {}
    for info in norms:
        if id(info.called) in decoder:
            stacks[info.name] = "decoder"
        elif id(info.called) in encoder:
            stacks[info.name] = "encoder"
        else:
            stacks[info.name] = "other"
    return stacks


def input_layouts(inputs: Any, enc_dec: bool) -> dict[str, tuple[int | None, torch.Tensor | None]]:
    """(token count, padding mask) of the inputs each stack of norms sees."""
    main = (seq_len(inputs), attention_mask_of(inputs))
    if not enc_dec:
        return {"main": main}
    decoder = (seq_len(inputs, "decoder_"), attention_mask_of(inputs, "decoder_attention_mask"))
    return {"encoder": main, "decoder": decoder}


__all__ = [
    "PARAM_NAMES",
    "PerSampleCollector",
    "affine_slope",
    "fast_slope",
    "input_layouts",
    "norm_channel_dim",
    "norm_stacks",
]
