# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The batched estimator: diagonal Fisher of every norm gain and bias scalar from exact per-sample gradients, one
forward and one backward per batch, optionally sharded over processes.

The per-sample gradients come from the hooks in :mod:`lntune.fisher.per_sample`, the log-likelihoods from
:mod:`lntune.fisher.likelihood`; :mod:`lntune.fisher.reference` is the batch-size-1 yardstick.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lntune.fisher.batches import (
    base_of,
    batch_size_of,
    call_model,
    is_encoder_decoder,
    map_tensors,
    prepare_inputs,
    split_batch,
    take_samples,
)
from lntune.fisher.likelihood import KINDS, TASKS, detect_task, per_sample_nll
from lntune.fisher.per_sample import (
    PARAM_NAMES,
    PerSampleCollector,
    affine_slope,
    input_layouts,
    norm_channel_dim,
    norm_stacks,
)
from lntune.fisher.per_sample import fast_slope as _fast_slope  # noqa: F401  (kept importable from here)
from lntune.fisher.scores import FisherScores
from lntune.norms import NormInfo, find_norms, norm_type_summary


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


def norm_params(norms: list[NormInfo]) -> list[nn.Parameter]:
    params = []
    for info in norms:
        for pname in PARAM_NAMES:
            p = getattr(info.module, pname, None)
            if isinstance(p, nn.Parameter):
                params.append(p)
    return params


class ScoringMode:
    """eval(), only the norm parameters requiring grad; restores train/eval flags and requires_grad on exit."""

    def __init__(self, model: nn.Module, norm_params: list[nn.Parameter]) -> None:
        self.model = model
        self.norm_params = norm_params

    def __enter__(self) -> ScoringMode:
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


def validate_args(kind: str, task: str | None, num_samples: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; use one of {KINDS}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS} (or None to detect it)")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
        raise TypeError(f"num_samples must be an int or None, got {num_samples!r}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 (or None for all samples), got {num_samples}")


def norms_to_score(model: nn.Module) -> list[NormInfo]:
    """The norms to score, named as in the base model (a ``PeftModel``'s ``base_model.model.`` prefix dropped), so a
    selection made from the scores fits ``LNTuneConfig(mask=...)`` on a fresh base and ``set_mask`` alike."""
    norms = find_norms(base_of(model))
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
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "every norm output is finite (the head or the loss is not)"


def finish_scores(
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
    validate_args(kind, task, num_samples)
    _check_loader(loader)
    model = _unwrap(model, accelerator)
    norms = norms_to_score(model)
    rank, world = _dist_context(accelerator)
    device = next(model.parameters()).device
    params = norm_params(norms)
    enc_dec = is_encoder_decoder(model)
    collector = PerSampleCollector(norms, device, norm_stacks(model, norms) if enc_dec else None)
    cap = num_samples
    seen = 0  # samples of all processes so far (global sample index of the next batch)
    local = 0
    bar = _progress(cap if cap is not None else _data_len(loader), progress and rank == 0, "Fisher")
    try:
        with ScoringMode(model, params):
            collector.attach()
            for batch_idx, batch in enumerate(loader):
                inputs, labels = split_batch(batch)
                size = batch_size_of(inputs)
                n = size if cap is None else min(size, cap - seen)
                start, seen = seen, seen + n
                bar.update(n)
                if n > 0 and batch_idx % world == rank:
                    if n < size:
                        inputs, labels = (
                            take_samples(inputs, n, size),
                            (None if labels is None else take_samples(labels, n, size)),
                        )
                    inputs = map_tensors(inputs, lambda t: t.to(device))
                    labels = None if labels is None else labels.to(device)
                    inputs = prepare_inputs(model, inputs, labels)
                    collector.begin(n, input_layouts(inputs, enc_dec))
                    logits = call_model(model, inputs)
                    if task is None:
                        task = detect_task(model, inputs, labels, logits)
                    loss = per_sample_nll(task, kind, logits, labels, inputs, seed, start).sum()
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
    count = _all_reduce(collector, local, world, accelerator)
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
    return finish_scores(collector.sums, count, norms, kind, task)


def _all_reduce(collector: PerSampleCollector, local: int, world: int, accelerator: Any = None) -> int:
    """Sum the Fisher sums, call counts and sample counts over processes; returns the global sample count.

    With an `accelerate.Accelerator` this is its own `reduce`; a plain `torch.distributed` group (no accelerator) gets
    `all_reduce` directly."""
    if world == 1:
        return local
    names = list(collector.calls)
    extra = torch.tensor([float(local)] + [float(collector.calls[n]) for n in names], dtype=torch.float64)
    flat = torch.cat([collector.flat, extra.to(collector.flat.device)])
    if accelerator is not None:
        flat = accelerator.reduce(flat, reduction="sum")
    else:
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    size = collector.flat.numel()
    collector.flat.copy_(flat[:size])
    for i, name in enumerate(names):
        collector.calls[name] = int(round(flat[size + 1 + i].item()))
    return int(round(flat[size].item()))


__all__ = [
    "KINDS",
    "TASKS",
    "FisherScores",
    "ScoringMode",
    "affine_slope",
    "finish_scores",
    "fisher_scores",
    "norm_channel_dim",
    "norm_params",
    "norms_to_score",
    "validate_args",
]


def __getattr__(name: str) -> Any:
    # fisher_scores_reference moved to lntune.fisher.reference (which imports this module); still reachable from here
    if name == "fisher_scores_reference":
        from lntune.fisher.reference import fisher_scores_reference

        return fisher_scores_reference
    raise AttributeError(f"module 'lntune.fisher.estimate' has no attribute {name!r}")
