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

:func:`fisher_scores_reference` computes the same numbers one sample at a time with plain autograd; it is slow and
exists to test the batched path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lntune.norms import NormInfo, find_norms, norm_type_summary

KINDS = ("empirical", "true")
TASKS = (
    "sequence_classification",
    "image_classification",
    "regression",
    "multi_label_classification",
    "token_classification",
    "causal_lm",
    "seq2seq_lm",
)
IGNORE_INDEX = -100
_PARAM_NAMES = ("weight", "bias")


class FisherScores(Mapping):
    """Diagonal Fisher per norm: ``name -> {"weight": fp32 [H], "bias": fp32 [H]}`` (no ``bias`` if the norm has none).

    Names are those :func:`lntune.norms.find_norms` reports for the scored model, in its module order. ``num_samples``
    is how many samples the means are over, ``roles`` maps each name to its role, ``kind`` and ``task`` say how the
    log-likelihood was formed.
    """

    def __init__(
        self,
        scores: dict[str, dict[str, torch.Tensor]],
        num_samples: int,
        roles: dict[str, str],
        kind: str = "empirical",
        task: str | None = None,
    ) -> None:
        self._scores = scores
        self.num_samples = num_samples
        self.roles = roles
        self.kind = kind
        self.task = task

    def __getitem__(self, name: str) -> dict[str, torch.Tensor]:
        return self._scores[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def num_scalars(self) -> int:
        """Number of scored scalars (all gains and biases of all norms)."""
        return sum(t.numel() for params in self._scores.values() for t in params.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists of floats), e.g. for ``json.dump``."""
        return {
            "num_samples": self.num_samples,
            "kind": self.kind,
            "task": self.task,
            "roles": dict(self.roles),
            "scores": {n: {k: t.tolist() for k, t in p.items()} for n, p in self._scores.items()},
        }

    def __repr__(self) -> str:
        return (
            f"FisherScores({len(self)} norms, {self.num_scalars} scalars, num_samples={self.num_samples}, "
            f"kind={self.kind!r}, task={self.task!r})"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Batches: inputs, labels, sizes.


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Model inputs and labels of one batch: a mapping (``labels``/``label`` key), an ``(inputs, labels)`` pair or a
    bare input tensor."""
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = inputs.pop("label", None)
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return inputs, labels
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        labels = batch[1] if batch[1] is None or isinstance(batch[1], torch.Tensor) else torch.as_tensor(batch[1])
        return batch[0], labels
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(
        f"fisher_scores: cannot read a batch of type {type(batch).__name__}; yield dicts of tensors (with a 'labels' "
        "key), (inputs, labels) pairs or input tensors"
    )


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        for key in ("input_ids", "pixel_values", "inputs_embeds"):
            value = inputs.get(key)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value.shape[0]
    raise ValueError("fisher_scores: cannot tell the batch size: the batch holds no input tensor")


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _take(obj: Any, n: int, batch_size: int) -> Any:
    """First ``n`` samples of every tensor whose leading dim is the batch."""
    return _map_tensors(obj, lambda t: t[:n] if t.dim() > 0 and t.shape[0] == batch_size else t)


def _call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out["logits"]
    return logits


def _attention_mask(inputs: Any, key: str = "attention_mask") -> torch.Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get(key)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def _seq_len(inputs: Any, prefix: str = "") -> int | None:
    """Token count of the (encoder or, with ``prefix="decoder_"``, decoder) inputs, read from their shapes."""
    if not isinstance(inputs, Mapping):
        return None
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        value = inputs.get(prefix + key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    return None


def _is_encoder_decoder(model: nn.Module) -> bool:
    base = _base_model(model)
    if not getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    get_enc, get_dec = getattr(base, "get_encoder", None), getattr(base, "get_decoder", None)
    if not (callable(get_enc) and callable(get_dec)):
        return False
    try:
        enc, dec = get_enc(), get_dec()
    except (AttributeError, NotImplementedError, TypeError):  # transformers' generic lookups raise these
        return False
    return isinstance(enc, nn.Module) and isinstance(dec, nn.Module) and enc is not dec and enc is not base


def _decoder_start_id(base: nn.Module) -> int | None:
    for cfg in (getattr(base, "config", None), getattr(base, "generation_config", None)):
        start = getattr(cfg, "decoder_start_token_id", None) if cfg is not None else None
        if start is not None:
            return int(start)
    return None


def _decoder_inputs_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``decoder_input_ids`` as the seq2seq models build them from ``labels``: shifted right behind the decoder start
    token, ``-100`` replaced by the pad id (``prepare_decoder_input_ids_from_labels`` when the model has it)."""
    base = _base_model(model)
    start = _decoder_start_id(base)
    pad = getattr(getattr(base, "config", None), "pad_token_id", None)
    if start is None:
        raise ValueError(
            f"fisher_scores: {type(base).__name__} has no decoder_start_token_id (config or generation_config), so "
            "decoder_input_ids cannot be built from the labels; set config.decoder_start_token_id or pass "
            "decoder_input_ids in the batch"
        )
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare) and getattr(base.config, "decoder_start_token_id", None) is not None:
        return prepare(labels=labels)
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill_(shifted == IGNORE_INDEX, 0 if pad is None else int(pad))


def _accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _prepare_inputs(model: nn.Module, inputs: Any, labels: torch.Tensor | None) -> Any:
    """The model inputs of a batch, completed as the model's own training forward would complete them.

    Encoder-decoder models get ``decoder_input_ids`` from the labels (the labels are not passed to the model: the
    loss is formed here). Causal LMs with left padding get ``position_ids`` counted from the first real token (as
    ``generate`` does), so a sample's positions do not depend on how much padding precedes it.
    """
    if not isinstance(inputs, Mapping):
        return inputs
    if (
        labels is not None
        and "decoder_input_ids" not in inputs
        and "decoder_inputs_embeds" not in inputs
        and _is_encoder_decoder(model)
    ):
        if labels.dim() != 2 or labels.is_floating_point():
            raise ValueError(
                f"fisher_scores: an encoder-decoder batch needs token labels [batch, target length] to build the "
                f"decoder inputs from, got labels of shape {tuple(labels.shape)} ({labels.dtype}); pass "
                "decoder_input_ids in the batch"
            )
        inputs = {**inputs, "decoder_input_ids": _decoder_inputs_from_labels(model, labels)}
    mask = _attention_mask(inputs)
    if (
        mask is not None
        and "position_ids" not in inputs
        and bool((mask[:, 0] == 0).any())
        and _task_of_model(model) == "causal_lm"
        and _accepts(model, "position_ids")
    ):
        inputs = {**inputs, "position_ids": (mask.long().cumsum(-1) - 1).clamp_(min=0)}
    return inputs


# ----------------------------------------------------------------------------------------------------------------------
# Task and log-likelihood.


def _base_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _task_of_model(model: nn.Module) -> str | None:
    """Task told by the model class alone (None when the batch has to decide)."""
    base = _base_model(model)
    cls_name = type(base).__name__
    if cls_name.endswith("ForTokenClassification"):
        return "token_classification"
    if _is_encoder_decoder(base) and cls_name.endswith(("ForConditionalGeneration", "Seq2SeqLM", "LMHeadModel")):
        return "seq2seq_lm"
    if cls_name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    return None


def _detect_task(model: nn.Module, inputs: Any, labels: torch.Tensor | None, logits: torch.Tensor) -> str:
    """Task from the model class and config, then from the shapes of labels and logits (transformers' rules)."""
    known = _task_of_model(model)
    if known is not None:
        return known
    base = _base_model(model)
    cls_name = type(base).__name__
    problem = getattr(getattr(base, "config", None), "problem_type", None)
    if problem == "regression":
        return "regression"
    if problem == "multi_label_classification":
        return "multi_label_classification"
    if logits.dim() == 2:
        if logits.shape[-1] == 1:
            return "regression"
        if labels is None or not labels.is_floating_point():
            is_image = isinstance(inputs, Mapping) and "pixel_values" in inputs
            return "image_classification" if is_image else "sequence_classification"
        return "multi_label_classification"
    if logits.dim() == 3:
        return "token_classification"
    raise ValueError(
        f"fisher_scores: cannot tell the task of {cls_name} from logits of shape {tuple(logits.shape)}; "
        f"pass task= one of {TASKS}"
    )


def _sample_seed(seed: int, index: int) -> int:
    """Seed of the label draw for the sample at global position ``index``: the same draw whatever the batching."""
    return (seed * 6364136223846793005 + index * 1442695040888963407 + 1) % (2**63 - 1)


def _uniforms(seed: int, index: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_sample_seed(seed, index))
    return torch.rand(n, generator=gen, dtype=torch.float64)


def _normals(seed: int, index: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_sample_seed(seed, index))
    return torch.randn(n, generator=gen, dtype=torch.float64)


def _sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``softmax(logits)`` (rows) with the given uniforms (one per row)."""
    cdf = torch.softmax(logits.detach().double(), dim=-1).cumsum(-1)
    target = (u.to(cdf.device) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def _token_targets(task: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any) -> tuple:
    """(logits [B, T, C], labels [B, T]) aligned position by position, ``IGNORE_INDEX`` where nothing is predicted."""
    if task == "causal_lm":
        if labels is None:
            ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
            if ids is None:
                raise ValueError("fisher_scores: a causal LM batch needs 'labels' or 'input_ids'")
            labels = ids.clone()
            mask = _attention_mask(inputs)
            if mask is not None:
                labels[mask == 0] = IGNORE_INDEX
        targets = labels[:, 1:].to(logits.device)
        mask = _attention_mask(inputs)
        if mask is not None:  # a padding position predicts nothing (with left padding it precedes the first token)
            targets = targets.masked_fill(mask[:, :-1].to(targets.device) == 0, IGNORE_INDEX)
        return logits[:, :-1], targets
    if task == "seq2seq_lm":
        if labels is None:  # kind="true": every decoder position (but decoder padding) is a sample position
            labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
            mask = _attention_mask(inputs, "decoder_attention_mask")
            if mask is not None:
                labels[mask.to(labels.device) == 0] = IGNORE_INDEX
        return logits, labels.to(logits.device)
    if labels is None:
        labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        mask = _attention_mask(inputs)
        if mask is not None:
            labels[mask == 0] = IGNORE_INDEX
    return logits, labels.to(logits.device)


def _per_sample_nll(
    task: str, kind: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any, seed: int, start: int
) -> torch.Tensor:
    """Negative log-likelihood of each sample ``[B]`` (fp32); for ``kind="true"`` of labels drawn from the model."""
    batch = logits.shape[0]
    if kind == "empirical" and labels is None and task != "causal_lm":
        raise ValueError(
            "fisher_scores: kind='empirical' needs the true labels, but the batch has no 'labels'; "
            "add them or use kind='true' to sample labels from the model"
        )
    if task in ("sequence_classification", "image_classification"):
        if kind == "true":
            u = torch.stack([_uniforms(seed, start + i, 1)[0] for i in range(batch)])
            labels = _sample_categorical(logits, u)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -logp.gather(1, labels.to(logits.device).long().view(-1, 1)).squeeze(1)
    if task == "regression":
        pred = logits.float().reshape(batch, -1)
        if kind == "true":
            noise = torch.stack([_normals(seed, start + i, pred.shape[1]) for i in range(batch)])
            target = pred.detach() + noise.to(pred)
        else:
            target = labels.to(pred).reshape(batch, -1)
        return 0.5 * (pred - target).square().sum(1)
    if task == "multi_label_classification":
        pred = logits.float().reshape(batch, -1)
        if kind == "true":
            u = torch.stack([_uniforms(seed, start + i, pred.shape[1]) for i in range(batch)])
            target = (u.to(pred.device) < torch.sigmoid(pred.detach()).double()).to(pred)
        else:
            target = labels.to(pred).reshape(batch, -1)
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").sum(1)
    if task in ("token_classification", "causal_lm", "seq2seq_lm"):
        tok_logits, tok_labels = _token_targets(task, logits, labels, inputs)
        valid = tok_labels != IGNORE_INDEX
        if kind == "true":
            tok_labels = torch.full_like(tok_labels, IGNORE_INDEX)
            for i in range(batch):
                pos = valid[i].nonzero().squeeze(1)
                if pos.numel():
                    u = _uniforms(seed, start + i, pos.numel())
                    tok_labels[i, pos] = _sample_categorical(tok_logits[i, pos], u)
        nll = F.cross_entropy(
            tok_logits.float().flatten(0, 1), tok_labels.clamp(min=0).flatten(), reduction="none"
        ).view(tok_labels.shape)
        return (nll * valid).sum(1)
    raise ValueError(f"fisher_scores: unknown task {task!r}; use one of {TASKS}")


# ----------------------------------------------------------------------------------------------------------------------
# Per-sample gradients of the norm parameters.


def _fast_slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
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


class _Collector:
    """Hooks every norm and accumulates its per-sample parameter gradients, batch by batch."""

    def __init__(self, norms: list[NormInfo], device: torch.device, stacks: dict[str, str] | None = None) -> None:
        self.norms = norms
        # which inputs each norm sees: "encoder"/"decoder" in an encoder-decoder model, else "main"
        self.stacks = stacks or {}
        # One flat fp64 accumulator; ``sums[name][param]`` are views into it (one add and one all-reduce per batch).
        self.layout = [
            (info.name, pname, getattr(info.module, pname).shape)
            for info in norms
            for pname in _PARAM_NAMES
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
        slope = _fast_slope(module, x)
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


# ----------------------------------------------------------------------------------------------------------------------
# Model state and distribution.


def _unwrap(model: nn.Module, accelerator: Any) -> nn.Module:
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _dist_context(accelerator: Any) -> tuple[int, int]:
    if accelerator is not None:
        return int(accelerator.process_index), int(accelerator.num_processes)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_loader(loader: Any) -> None:
    if type(loader).__module__.startswith("accelerate.") and hasattr(loader, "base_dataloader"):
        raise ValueError(
            "fisher_scores: pass the DataLoader *before* accelerator.prepare(); fisher_scores shards it itself so "
            "every sample is counted exactly once (prepared loaders repeat samples to even out the last batch)"
        )


def _norm_params(norms: list[NormInfo]) -> list[nn.Parameter]:
    params = []
    for info in norms:
        for pname in _PARAM_NAMES:
            p = getattr(info.module, pname, None)
            if isinstance(p, nn.Parameter):
                params.append(p)
    return params


class _ScoringMode:
    """eval(), only the norm parameters requiring grad; restores train/eval flags and requires_grad on exit."""

    def __init__(self, model: nn.Module, norm_params: list[nn.Parameter]) -> None:
        self.model = model
        self.norm_params = norm_params

    def __enter__(self) -> _ScoringMode:
        self.training = {m: m.training for m in self.model.modules()}
        self.requires_grad = {p: p.requires_grad for p in self.model.parameters()}
        for p in self.norm_params:
            self.requires_grad.setdefault(p, p.requires_grad)
        self.model.eval()
        for p in self.requires_grad:
            p.requires_grad_(False)
        for p in self.norm_params:
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        for m, flag in self.training.items():
            m.training = flag


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc=desc, leave=False)


def _data_len(loader: Any) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _validate(kind: str, task: str | None, num_samples: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; use one of {KINDS}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS} (or None to detect it)")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
        raise TypeError(f"num_samples must be an int or None, got {num_samples!r}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 (or None for all samples), got {num_samples}")


def _norms_of(model: nn.Module) -> list[NormInfo]:
    """The norms to score, named as in the base model (a ``PeftModel``'s ``base_model.model.`` prefix dropped), so a
    selection made from the scores fits ``LNTuneConfig(mask=...)`` on a fresh base and ``set_mask`` alike."""
    norms = find_norms(_base_model(model))
    if not norms:
        raise ValueError(
            f"{type(model).__name__} has {norm_type_summary(model)}: there is nothing to score; lntune scores "
            "LayerNorm/RMSNorm/GroupNorm-style layers with a 1-D weight (and optional bias)"
        )
    return norms


def _first_nonfinite_norm(model: nn.Module, norms: list[NormInfo], inputs: Any) -> str:
    """Which norm first puts out a non-finite value on ``inputs`` (an extra forward, on the error path only)."""
    found: list[str] = []

    def probe(name: str):
        def hook(called: nn.Module, args: tuple, output: Any) -> None:
            if not found and isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
                source = "its input" if args and not bool(torch.isfinite(args[0]).all()) else "the norm itself"
                found.append(f"the first non-finite norm output is at norm {name!r} (from {source})")

        return hook

    handles = [info.called.register_forward_hook(probe(info.name)) for info in norms]
    try:
        with torch.no_grad():
            _call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "every norm output is finite (the head or the loss is not)"


def _norm_stacks(model: nn.Module, norms: list[NormInfo]) -> dict[str, str]:
    """``"encoder"`` / ``"decoder"`` for each norm of an encoder-decoder model (by module membership)."""
    base = _base_model(model)
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


def _layouts(inputs: Any, enc_dec: bool) -> dict[str, tuple[int | None, torch.Tensor | None]]:
    """(token count, padding mask) of the inputs each stack of norms sees."""
    main = (_seq_len(inputs), _attention_mask(inputs))
    if not enc_dec:
        return {"main": main}
    decoder = (_seq_len(inputs, "decoder_"), _attention_mask(inputs, "decoder_attention_mask"))
    return {"encoder": main, "decoder": decoder}


def _finish(
    sums: dict[str, dict[str, torch.Tensor]], count: int, norms: list[NormInfo], kind: str, task: str | None
) -> FisherScores:
    scores = {name: {k: (v / max(count, 1)).float().cpu() for k, v in params.items()} for name, params in sums.items()}
    for name, params in scores.items():
        for pname, t in params.items():
            if not torch.isfinite(t).all():
                raise FloatingPointError(f"fisher_scores: the {pname} scores of {name!r} are not finite")
    return FisherScores(scores, count, {info.name: info.role for info in norms}, kind, task)


def fisher_scores(
    model: nn.Module,
    loader: Iterable,
    num_samples: int | None = 1024,
    kind: str = "empirical",
    task: str | None = None,
    accelerator: Any = None,
    progress: bool = True,
    seed: int = 0,
) -> FisherScores:
    """Diagonal Fisher of every norm gain and bias scalar of ``model`` over the first ``num_samples`` samples.

    ``loader`` yields batches (dicts with ``labels``, ``(inputs, labels)`` pairs or input tensors); every batch costs one
    forward and one backward, and padding positions (``attention_mask == 0``; left or right padding) are left out.
    Encoder-decoder batches may be the standard ``input_ids``/``attention_mask``/``labels`` ones: the decoder inputs are
    built from the labels as the model does (labels ``-100`` are not predicted). Norms that see flattened
    ``[batch * tokens, ...]`` rows are mapped back to samples by the token count of the model's inputs. Scores are named
    as in the base model (no ``PeftModel`` prefix), so a selection fits ``LNTuneConfig(mask=...)``. ``kind="empirical"`` uses
    the batch labels, ``kind="true"`` draws them from the model's predictive distribution (seeded per sample position,
    so the draw does not depend on batching or sharding). ``task`` is detected from the model and batch unless given
    (one of :data:`TASKS`). ``num_samples=None`` uses every sample; a cap larger than the data warns and uses all.

    Distributed (an ``accelerate.Accelerator`` or an initialised ``torch.distributed``): pass the *unprepared* loader;
    every process walks the same batch sequence, scores batches ``rank, rank + world, ...`` and the sums are
    all-reduced, so the result equals a single-process run over the same samples.
    """
    _validate(kind, task, num_samples)
    _check_loader(loader)
    model = _unwrap(model, accelerator)
    norms = _norms_of(model)
    rank, world = _dist_context(accelerator)
    device = next(model.parameters()).device
    params = _norm_params(norms)
    enc_dec = _is_encoder_decoder(model)
    collector = _Collector(norms, device, _norm_stacks(model, norms) if enc_dec else None)
    cap = num_samples
    seen = 0  # samples of all processes so far (global sample index of the next batch)
    local = 0
    bar = _progress(cap if cap is not None else _data_len(loader), progress and rank == 0, "Fisher")
    try:
        with _ScoringMode(model, params):
            collector.attach()
            for batch_idx, batch in enumerate(loader):
                inputs, labels = _split_batch(batch)
                size = _batch_size(inputs)
                n = size if cap is None else min(size, cap - seen)
                start, seen = seen, seen + n
                bar.update(n)
                if n > 0 and batch_idx % world == rank:
                    if n < size:
                        inputs, labels = _take(inputs, n, size), (None if labels is None else _take(labels, n, size))
                    inputs = _map_tensors(inputs, lambda t: t.to(device))
                    labels = None if labels is None else labels.to(device)
                    inputs = _prepare_inputs(model, inputs, labels)
                    collector.begin(n, _layouts(inputs, enc_dec))
                    logits = _call_model(model, inputs)
                    if task is None:
                        task = _detect_task(model, inputs, labels, logits)
                    loss = _per_sample_nll(task, kind, logits, labels, inputs, seed, start).sum()
                    where = f"batch {batch_idx} (samples {start}..{start + n - 1})"
                    if not bool(torch.isfinite(loss.detach())):
                        raise FloatingPointError(
                            f"fisher_scores: {where} gave a non-finite loss ({loss.item()}); "
                            f"{_first_nonfinite_norm(model, norms, inputs)}; check the inputs/labels, the norm "
                            "parameters and the model's dtype"
                        )
                    torch.autograd.grad(loss, params, allow_unused=True)
                    collector.end(where)
                    local += n
                if cap is not None and seen >= cap:
                    break
    finally:
        collector.detach()
        bar.close()
    if seen == 0:
        raise ValueError("fisher_scores: the loader yielded no samples; pass a loader over a non-empty dataset")
    count = _all_reduce(collector, local, world)
    if cap is not None and seen < cap:
        warnings.warn(
            f"fisher_scores: num_samples={cap} but the data holds only {seen} samples; using all {seen}", stacklevel=2
        )
    never = [name for name, calls in collector.calls.items() if calls == 0]
    if never:
        warnings.warn(
            f"fisher_scores: {len(never)} norm(s) never ran with gradients during scoring and score 0: "
            f"{', '.join(never[:5])}{' ...' if len(never) > 5 else ''}",
            stacklevel=2,
        )
    return _finish(collector.sums, count, norms, kind, task)


def _all_reduce(collector: _Collector, local: int, world: int) -> int:
    """Sum the Fisher sums, call counts and sample counts over processes; returns the global sample count."""
    if world == 1:
        return local
    names = list(collector.calls)
    extra = torch.tensor([float(local)] + [float(collector.calls[n]) for n in names], dtype=torch.float64)
    flat = torch.cat([collector.flat, extra.to(collector.flat.device)])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    size = collector.flat.numel()
    collector.flat.copy_(flat[:size])
    for i, name in enumerate(names):
        collector.calls[name] = int(round(flat[size + 1 + i].item()))
    return int(round(flat[size].item()))


# ----------------------------------------------------------------------------------------------------------------------
# Reference: one sample at a time, plain autograd.


def _is_dataset(data: Any) -> bool:
    return isinstance(data, torch.utils.data.Dataset) or hasattr(data, "column_names")


# Keys whose dim 1 runs over the encoder (or only) input tokens, and over the decoder tokens.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "special_tokens_mask")
_DECODER_KEYS = tuple("decoder_" + key for key in _TOKEN_KEYS)


def _iter_samples(data: Any, enc_dec: bool = False) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """(inputs, labels) of single samples, batch dim 1, padding removed (by ``attention_mask`` for the token inputs
    and token labels; by ``decoder_attention_mask``, when given, for the decoder inputs and seq2seq labels)."""
    if _is_dataset(data):
        for i in range(len(data)):
            example = data[i]
            batch = _map_tensors(
                {k: torch.as_tensor(v) for k, v in example.items()} if isinstance(example, Mapping) else example,
                lambda t: t.unsqueeze(0),
            )
            yield _split_batch(batch)
        return
    for batch in data:
        inputs, labels = _split_batch(batch)
        size = _batch_size(inputs)
        mask = _attention_mask(inputs)
        dec_mask = _attention_mask(inputs, "decoder_attention_mask")
        for i in range(size):
            keep = None if mask is None else mask[i].bool()
            dec_keep = None if dec_mask is None else dec_mask[i].bool()
            sample = _pick_sample(inputs, i, size)
            if isinstance(sample, dict):
                for key in sample:
                    if key in _TOKEN_KEYS or key in _DECODER_KEYS:
                        sample[key] = _drop_padding(sample[key], dec_keep if key in _DECODER_KEYS else keep)
            label = None if labels is None else _pick_sample(labels, i, size)
            if label is not None and label.dim() >= 2 and not label.is_floating_point():  # token labels
                label = _drop_padding(label, dec_keep if enc_dec else keep)
            yield sample, label


def _pick_sample(obj: Any, index: int, size: int) -> Any:
    """Sample ``index`` of every batch tensor in ``obj`` (batch dim kept, size 1)."""
    return _map_tensors(obj, lambda t: t if t.dim() == 0 or t.shape[0] != size else t[index : index + 1])


def _drop_padding(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    if keep is None or t.dim() < 2:
        return t
    if t.shape[1] != keep.shape[0]:
        raise ValueError(
            f"fisher_scores_reference: a token tensor of shape {tuple(t.shape)} does not match its attention mask "
            f"of length {keep.shape[0]}"
        )
    return t[:, keep]


def _reference_nll(
    task: str, kind: str, logits: torch.Tensor, labels: torch.Tensor | None, inputs: Any, seed: int, index: int
) -> torch.Tensor:
    """Log-likelihood of one sample written plainly (torch losses); shares only the label draw with the batched path."""
    logits = logits.float()
    if task in ("sequence_classification", "image_classification"):
        y = _sample_categorical(logits, _uniforms(seed, index, 1)) if kind == "true" else labels.view(-1).long()
        return F.cross_entropy(logits, y.to(logits.device), reduction="sum")
    if task == "regression":
        pred = logits.reshape(-1)
        y = pred.detach() + _normals(seed, index, pred.numel()).to(pred) if kind == "true" else labels.reshape(-1)
        return 0.5 * F.mse_loss(pred, y.to(pred), reduction="sum")
    if task == "multi_label_classification":
        pred = logits.reshape(-1)
        if kind == "true":
            y = (_uniforms(seed, index, pred.numel()).to(pred.device) < torch.sigmoid(pred.detach()).double()).float()
        else:
            y = labels.reshape(-1).float()
        return F.binary_cross_entropy_with_logits(pred, y.to(pred), reduction="sum")
    if task == "causal_lm":
        y = labels if labels is not None else inputs["input_ids"]
        logits, y = logits[0, :-1], y[0, 1:].to(logits.device)
    elif task in ("token_classification", "seq2seq_lm"):
        logits, y = logits[0], labels[0].to(logits.device) if labels is not None else None
        if y is None:
            y = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    else:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    if kind == "true":
        pos = (y != IGNORE_INDEX).nonzero().squeeze(1)
        y = torch.full_like(y, IGNORE_INDEX)
        y[pos] = _sample_categorical(logits[pos], _uniforms(seed, index, pos.numel()))
    return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")


def fisher_scores_reference(
    model: nn.Module,
    data: Any,
    num_samples: int | None = None,
    kind: str = "empirical",
    task: str | None = None,
    seed: int = 0,
) -> FisherScores:
    """Same scores as :func:`fisher_scores`, one sample at a time (batch size 1, padding removed), plain autograd.

    ``data`` is a loader/iterable of batches (split into samples) or a dataset of single examples. Slow; it is the
    yardstick for the batched implementation in tests and ``bench/fisher.py``.
    """
    _validate(kind, task, num_samples)
    norms = _norms_of(model)
    owners = [
        (info.name, pname)
        for info in norms
        for pname in _PARAM_NAMES
        if isinstance(getattr(info.module, pname, None), nn.Parameter)
    ]
    params = [getattr(info.module, pname) for info in norms for pname in _PARAM_NAMES if (info.name, pname) in owners]
    sums = {info.name: {} for info in norms}
    count = 0
    with _ScoringMode(model, params):
        device = next(model.parameters()).device
        for inputs, labels in _iter_samples(data, _is_encoder_decoder(model)):
            if num_samples is not None and count >= num_samples:
                break
            inputs = _map_tensors(inputs, lambda t: t.to(device))
            labels = None if labels is None else labels.to(device)
            inputs = _prepare_inputs(model, inputs, labels)
            logits = _call_model(model, inputs)
            if task is None:
                task = _detect_task(model, inputs, labels, logits)
            nll = _reference_nll(task, kind, logits, labels, inputs, seed, count)
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            for (name, pname), p, grad in zip(owners, params, grads):
                sq = torch.zeros_like(p, dtype=torch.float64) if grad is None else grad.double().square()
                sums[name][pname] = sums[name].get(pname, 0) + sq
            count += 1
    if count == 0:
        raise ValueError("fisher_scores_reference: the data yielded no samples; pass non-empty data")
    return _finish(sums, count, norms, kind, task)


__all__ = [
    "KINDS",
    "TASKS",
    "FisherScores",
    "affine_slope",
    "fisher_scores",
    "fisher_scores_reference",
    "norm_channel_dim",
]
