# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The tuner layer: a norm module plus, per adapter, deltas for its gain and bias."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from torch import nn
from torch.func import functional_call

from .compat import BaseTunerLayer, check_adapters_to_merge
from .routing import BASE_ADAPTER, Routing

_RANDOM_INIT_STD = 0.1
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _functional_kind(module: nn.Module) -> Optional[str]:
    """Which torch functional computes `module` exactly (plain torch norm classes only; subclasses may override)."""
    if type(module) is nn.LayerNorm:
        return "layer_norm"
    if type(module) is getattr(nn, "RMSNorm", None):
        return "rms_norm"
    if type(module) is nn.GroupNorm:
        return "group_norm"
    return None


def _promotes_fp32_params(module: nn.Module) -> bool:
    """Whether `module`'s forward, given fp32 gains on a bf16/fp16 input, computes in fp32 without failing.

    True for transformers' Llama-family RMSNorms and T5LayerNorm (they have `variance_epsilon` and are plain
    elementwise ops) and Gemma's `1 + weight` RMSNorm (which computes in fp32 anyway). Other classes may call fused
    kernels that reject mixed dtypes, so they get base + delta rounded to the base dtype.
    """
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return False
    return hasattr(module, "variance_epsilon") or (
        cls.__name__.startswith("Gemma") and cls.__name__.endswith("RMSNorm")
    )


class LNTuneLayer(nn.Module, BaseTunerLayer):
    """
    Wraps one normalization layer. The base norm stays as `base_layer`, untouched; each adapter owns a delta for the
    gain (`lntune_weight[name]`) and the bias (`lntune_bias[name]`). The adapted forward runs the *base module's own
    forward* with `weight + delta` and `bias + delta` (via `torch.func.functional_call`), so any norm class works,
    including Gemma's `x * (1 + weight)` RMSNorm (the delta acts on the effective scale) and T5's bias-free norm.

    With a mask (Fisher-selected subset), the trainable tensor holds only the selected scalars and is scattered into a
    zero delta in forward: unselected scalars cannot move, whatever the optimizer does, and the saved adapter holds only
    the selected values.
    """

    adapter_layer_names = ("lntune_weight", "lntune_bias")
    other_param_names = ("lntune_weight_index", "lntune_bias_index")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, module_name: str = "") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lntune_weight = nn.ParameterDict({})
        self.lntune_bias = nn.ParameterDict({})
        # indices of the selected scalars of masked adapters (non-persistent: the indices are saved in the config)
        self.lntune_weight_index = BufferDict({}, persistent=False)
        self.lntune_bias_index = BufferDict({}, persistent=False)
        self.module_name = module_name
        # peft's contract for tuner layers: a norm maps its normalized size to itself
        affine = getattr(base_layer, "weight", None)
        if affine is None:
            affine = getattr(base_layer, "bias", None)
        self.in_features = self.out_features = int(affine.shape[0]) if affine is not None else None
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self._premerge: dict[str, torch.Tensor] = {}
        self.routing: Optional[Routing] = None  # set by LNTuneModel for the duration of a mixed-batch forward
        self.update_layer(adapter_name, config)

    # ------------------------------------------------------------------ set-up
    def update_layer(self, adapter_name: str, config) -> None:
        """Create the deltas of `adapter_name` for this norm (zeros, or small random values if init_weights=False)."""
        base = self.get_base_layer()
        mask = (config.mask or {}).get(self.module_name)
        if config.mask is not None and mask is None:
            return  # the Fisher mask selected nothing in this norm
        for pname in config.tuned_params:
            base_param = getattr(base, pname, None)
            if not isinstance(base_param, nn.Parameter):
                continue  # e.g. bias of an RMSNorm / T5 LayerNorm: nothing to tune
            size = base_param.numel()
            if mask is not None:
                if pname not in mask or not mask[pname]:
                    continue
                index = torch.tensor(mask[pname], dtype=torch.long, device=base_param.device)
                if int(index.max()) >= size:
                    raise ValueError(
                        f"mask[{self.module_name!r}][{pname!r}] has index {int(index.max())}, but this norm's {pname} "
                        f"has only {size} entries: the mask was made for a different model."
                    )
                getattr(self, f"lntune_{pname}_index")[adapter_name] = index
                size = index.numel()
            delta = torch.zeros(size, dtype=torch.float32, device=base_param.device)
            if not config.init_weights:
                delta.normal_(0.0, _RANDOM_INIT_STD)
            store = self.lntune_weight if pname == "weight" else self.lntune_bias
            store[adapter_name] = nn.Parameter(delta)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        # keep deltas in fp32 even on a bf16/fp16 base: tiny LN updates vanish in bf16
        for store in (self.lntune_weight, self.lntune_bias):
            if adapter_name in store and store[adapter_name].dtype != torch.float32:
                store[adapter_name] = nn.Parameter(store[adapter_name].float())
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.lntune_weight or adapter_name in self.lntune_bias

    def adapter_params(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """The trainable tensors of `adapter_name` in this norm, `{"weight": ..., "bias": ...}` (only those it has;
        for a masked adapter, the selected values only)."""
        stores = (("weight", self.lntune_weight), ("bias", self.lntune_bias))
        return {pname: store[adapter_name] for pname, store in stores if adapter_name in store}

    # ------------------------------------------------------------------ per-row routing
    def set_routing(self, names: Optional[Sequence[str]], expand: int = 1) -> None:
        """Make this norm's next forwards run row i with adapter `names[i]` (`"__base__"`: none); `None` stops it.

        `model(**batch, adapter_names=[...])` routes every norm for one forward; this per-norm switch is for code that
        chooses per layer, from inside the forward (forward pre-hooks, as `lntune.continual`'s single-pass bank does).
        """
        self.routing = None if names is None else Routing.from_names(list(names), expand=expand)

    @contextmanager
    def routed(self, names: Sequence[str], expand: int = 1) -> Iterator[None]:
        """`set_routing(names)` for the duration of a `with` block, then the previous routing again."""
        previous = self.routing
        self.set_routing(names, expand)
        try:
            yield
        finally:
            self.routing = previous

    # ------------------------------------------------------------------ deltas
    def dense_delta(self, pname: str, adapter_name: str) -> Optional[torch.Tensor]:
        """The full-size fp32 delta of `pname` ("weight"/"bias") for `adapter_name`, or None if it has none here."""
        store = self.lntune_weight if pname == "weight" else self.lntune_bias
        if adapter_name not in store:
            return None
        values = store[adapter_name]
        index = getattr(self, f"lntune_{pname}_index")
        if adapter_name not in index:
            return values
        base_param = getattr(self.get_base_layer(), pname)
        return values.new_zeros(base_param.numel()).scatter(0, index[adapter_name], values)

    def apply_mask(self, adapter_name: str, per_param: Optional[dict[str, list[int]]]) -> dict[nn.Parameter, Any]:
        """Keep only the scalars `per_param` selects of `adapter_name`'s deltas (current values are kept).

        Returns {old parameter: new parameter, or None if nothing of it is left}, so callers holding the old tensors
        (an optimizer) can swap them.
        """
        swapped: dict[nn.Parameter, Any] = {}
        for pname in ("weight", "bias"):
            store = self.lntune_weight if pname == "weight" else self.lntune_bias
            index = getattr(self, f"lntune_{pname}_index")
            if adapter_name not in store:
                continue
            old = store[adapter_name]
            dense = self.dense_delta(pname, adapter_name).detach()
            selected = (per_param or {}).get(pname) or []
            if adapter_name in index:
                del index[adapter_name]
            if not selected:
                del store[adapter_name]
                swapped[old] = None
                continue
            idx = torch.tensor(selected, dtype=torch.long, device=dense.device)
            store[adapter_name] = nn.Parameter(dense[idx].clone(), requires_grad=old.requires_grad)
            index[adapter_name] = idx
            swapped[old] = store[adapter_name]
        return swapped

    def _summed_deltas(self, adapter_names: list[str]) -> dict[str, torch.Tensor]:
        """{"weight"/"bias": the sum of the dense deltas of `adapter_names`}, for the parameters that have any."""
        out = {}
        for pname in ("weight", "bias"):
            deltas = [d for d in (self.dense_delta(pname, a) for a in adapter_names) if d is not None]
            if deltas:
                out[pname] = deltas[0] if len(deltas) == 1 else torch.stack(deltas).sum(0)
        return out

    def _adapted_params(
        self, deltas: dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None
    ) -> dict[str, torch.Tensor]:
        """base + delta for each parameter in `deltas`, in `dtype` (default: the base parameter's own dtype)."""
        base = self.get_base_layer()
        params = {}
        for pname, total in deltas.items():
            base_param = getattr(base, pname)
            target = dtype or base_param.dtype
            if base_param.dtype == total.dtype == target:
                params[pname] = base_param + total.view_as(base_param)
            else:
                params[pname] = (base_param.float() + total.float().view_as(base_param)).to(target)
        return params

    def _adapted_forward(self, x: torch.Tensor, adapter_names: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.get_base_layer()
        deltas = self._summed_deltas(adapter_names)
        if not deltas:
            return base(x, *args, **kwargs)
        # On a bf16/fp16 base, base + delta rounded to the base dtype loses fp32 deltas below the dtype's step
        # (~0.004 for a bf16 gain near 1). Where the norm's maths is known, apply base + delta in fp32 instead and
        # round only the output, as the fused bf16 kernels do internally.
        precise = x.dtype in _LOW_PRECISION and any(d.dtype == torch.float32 for d in deltas.values())
        kind = _functional_kind(base) if not args and not kwargs else None
        if kind is not None:
            # the fused kernel, no module re-parametrisation
            params = self._adapted_params(deltas, torch.float32 if precise else None)
            weight, bias = params.get("weight", base.weight), params.get("bias", getattr(base, "bias", None))
            xin = x
            if precise:
                xin = x.float()
                weight = weight.float() if weight is not None else None
                bias = bias.float() if bias is not None else None
            if kind == "layer_norm":
                out = F.layer_norm(xin, base.normalized_shape, weight, bias, base.eps)
            elif kind == "rms_norm":
                out = F.rms_norm(xin, base.normalized_shape, weight, base.eps)
            else:
                out = F.group_norm(xin, base.num_groups, weight, bias, base.eps)
            return out.to(x.dtype)
        if precise and _promotes_fp32_params(base):
            out = functional_call(base, self._adapted_params(deltas, torch.float32), (x, *args), kwargs)
            return out.to(x.dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out
        return functional_call(base, self._adapted_params(deltas), (x, *args), kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        routing = self.routing
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if routing is not None:
            if self.merged:
                raise ValueError(
                    f"Cannot route a mixed batch (adapter_names=...) while adapters {self.merged_adapters} are merged "
                    "into the base weights: call model.unmerge_adapter() first."
                )
            return self._mixed_batch_forward(x, routing, *args, **kwargs)
        active = [a for a in self.active_adapters if self.has_adapter(a)]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        return self._adapted_forward(x, active, *args, **kwargs)

    def _mixed_batch_forward(self, x: torch.Tensor, routing: Routing, *args: Any, **kwargs: Any) -> torch.Tensor:
        groups = routing.groups_for(x.shape[0], x.device, where=self.module_name or "a norm")
        if len(groups) == 1:  # the whole batch uses one adapter: no gather/scatter needed
            name = groups[0][0]
            if name == BASE_ADAPTER or not self.has_adapter(name):
                return self.base_layer(x, *args, **kwargs)
            return self._adapted_forward(x, [name], *args, **kwargs)
        out = None
        for name, rows in groups:
            xs = x.index_select(0, rows)
            if name == BASE_ADAPTER or not self.has_adapter(name):
                ys = self.base_layer(xs, *args, **kwargs)
            else:
                ys = self._adapted_forward(xs, [name], *args, **kwargs)
            if out is None:
                out = ys.new_empty((x.shape[0], *ys.shape[1:]))
            out.index_copy_(0, rows, ys)  # in place: one output buffer for all groups (autograd tracks it)
        return out

    # ------------------------------------------------------------------ merging
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold the deltas of `adapter_names` (default: the active ones) into the base norm's gain and bias."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        for adapter_name in adapter_names:
            if not self.has_adapter(adapter_name):
                continue
            # compute and check both merged tensors before writing either, so a failed safe merge changes nothing
            merged: dict[str, torch.Tensor] = {}
            for pname in ("weight", "bias"):
                delta = self.dense_delta(pname, adapter_name)
                if delta is None:
                    continue
                param = getattr(base, pname)
                merged[pname] = (param.data.float() + delta.detach().view_as(param)).to(param.dtype)
                if safe_merge and not torch.isfinite(merged[pname]).all():
                    raise ValueError(
                        f"NaNs detected in the merged {pname} of {self.module_name}: adapter {adapter_name} seems broken"
                    )
            for pname, value in merged.items():
                param = getattr(base, pname)
                if pname not in self._premerge:
                    # keep the original values so that unmerge restores them exactly, in any dtype
                    self._premerge[pname] = param.data.detach().clone()
                param.data.copy_(value)
            self.merged_adapters.append(adapter_name)

    def unmerge(self) -> None:
        """Restore the base norm's original gain and bias."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        for pname, original in self._premerge.items():
            getattr(base, pname).data.copy_(original.to(getattr(base, pname).device))
        self._premerge = {}
        self.merged_adapters = []

    def __repr__(self) -> str:
        return "lntune." + super().__repr__()
