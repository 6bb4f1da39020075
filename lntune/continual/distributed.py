# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""How several processes share a continual run, on accelerate's collectives.

Every process holds the whole bank and runs the same calls. Frozen passes deal their batches round-robin to the
processes (:func:`positions`) and all-gather the rows back into order (:func:`gather_rows`); stage 1 draws one
shuffled order on every process, gives each process every ``world``-th sample of each batch (:func:`train_batches`)
and sums the gradients (:func:`all_reduce_grads`); what a replicated stage trained is broadcast from rank 0
(:func:`broadcast_params`). With one process every function returns its input untouched, without touching
``torch.distributed`` or accelerate's state. With several, the collectives are accelerate's (``gather``, ``reduce``,
``broadcast``, ``broadcast_object_list``, ``wait_for_everyone``), so the group must be accelerate's: create an
``accelerate.Accelerator`` (or ``PartialState``) before the run.

Functions take a ``ctx`` with ``rank``, ``world``, ``device`` (a :class:`~lntune.continual.context.RunContext`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import broadcast, broadcast_object_list, gather, gather_object, reduce, wait_for_everyone
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .stream import RowCollate, Rows, make_loader

if TYPE_CHECKING:
    from .context import RunContext

__all__ = [
    "all_reduce_grads",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_params",
    "gather_rows",
    "positions",
    "shuffled_batches",
    "train_batches",
]

TrainStep = tuple[int, Optional[torch.Tensor], Optional[dict[str, torch.Tensor]]]


def positions(n: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """Positions (in `0..n-1`) of the batches of `batch_size` that process `rank` of `world` computes: batches
    `rank, rank + world, ...` in order, each as one process forms it (only the last batch is short, and it stays the
    last of its process), so a batched pass gives every row the same values whatever the number of processes."""
    if world == 1:
        return np.arange(n)
    starts = range(rank * batch_size, n, world * batch_size)
    return np.concatenate([np.arange(s, min(s + batch_size, n)) for s in starts] or [np.zeros(0, dtype=np.int64)])


def comm_device(ctx: RunContext) -> torch.device:
    """Where collectives run: the run's device under NCCL, the CPU otherwise (gloo)."""
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(ctx: RunContext, local: dict[Any, torch.Tensor], n: int, batch_size: int) -> dict[Any, torch.Tensor]:
    """All-gather what each process computed for its `positions(n, batch_size, ...)` (`local[k]`: its rows in that
    order) and put the rows back in the order `0..n-1`: every process gets the same full tensors, on `ctx.device`."""
    if ctx.world == 1 or n == 0:
        return local
    spec: dict[Any, tuple[tuple[int, ...], torch.dtype]] = {}
    for k, shape, dtype in gather_object([(k, tuple(v.shape[1:]), v.dtype) for k, v in local.items()]):
        spec.setdefault(k, (shape, dtype))  # a process that ran no batch may not know every key
    counts = [len(positions(n, batch_size, r, ctx.world)) for r in range(ctx.world)]
    width, device = max(counts), comm_device(ctx)
    out = {}
    for k, (shape, dtype) in spec.items():
        buf = torch.zeros((width, *shape), dtype=dtype, device=device)  # padded: every process sends as many rows
        if k in local:
            buf[: len(local[k])] = local[k].to(device)
        gathered = gather(buf)
        pieces = []
        for i, start in enumerate(range(0, n, batch_size)):  # batch i is the (i // world)-th of process i % world
            first = (i % ctx.world) * width + (i // ctx.world) * batch_size
            pieces.append(gathered[first : first + min(batch_size, n - start)])
        out[k] = torch.cat(pieces).to(ctx.device)
    return out


def all_reduce_sum(ctx: RunContext, values: list[float]) -> list[float]:
    """Sums of `values` over the processes (the values themselves with one process)."""
    if ctx.world == 1:
        return values
    return reduce(torch.tensor(values, dtype=torch.float64, device=comm_device(ctx)), reduction="sum").tolist()


def all_reduce_grads(ctx: RunContext, params: list[nn.Parameter]) -> None:
    """Sum the gradients of `params` over the processes; a parameter no process gave a gradient keeps `None`."""
    if ctx.world == 1:
        return
    device = comm_device(ctx)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = reduce(torch.cat([g.reshape(-1).to(device, torch.float32) for g in grads] + [has]), reduction="sum")
    offset = 0
    for p, present in zip(params, flat[-len(params) :].tolist()):
        chunk = flat[offset : offset + p.numel()]
        offset += p.numel()
        p.grad = chunk.view_as(p).to(p.device, p.dtype).clone() if present > 0 else None


def broadcast_params(ctx: RunContext, params: list[nn.Parameter]) -> None:
    """Give every process rank 0's values of `params` (what a stage trained stays identical on all processes)."""
    if ctx.world == 1 or not params:
        return
    flat = broadcast(torch.cat([p.detach().reshape(-1).to(comm_device(ctx), torch.float32) for p in params]))
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def broadcast_object(ctx: RunContext, obj: Any) -> Any:
    """Rank 0's `obj` on every process (picklable objects)."""
    if ctx.world == 1:
        return obj
    return broadcast_object_list([obj])[0]


def barrier(ctx: RunContext) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if ctx.world > 1:
        wait_for_everyone()


def shuffled_batches(n: int, batch_size: int, num_workers: int, generator: torch.Generator) -> list[np.ndarray]:
    """The batches (positions in `0..n-1`) that one process's stage-1 loop draws from `generator`: the same shuffled
    `DataLoader`, iterated through the same tqdm, so the order is the same and `generator` ends in the same state.
    (tqdm.auto's bar calls `iter()` on the loader once more, which draws a seed, and with workers prefetches a
    permutation, from `generator`; drawing the order any other way would change it.)"""
    loader = DataLoader(
        range(n),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        collate_fn=np.asarray,
    )
    return list(tqdm(loader, disable=True))


def train_batches(ctx: RunContext, rows: np.ndarray, generator: torch.Generator, desc: str) -> Iterator[TrainStep]:
    """Stage-1 batches of `rows` in a shuffled order drawn from `generator`, with a progress bar: an iterator of
    `(batch size, rows of this process, its inputs)`. Several processes: every process draws the same order and takes
    every `world`-th sample of each batch (`None, None` when a short batch leaves it none)."""
    cfg = ctx.config
    if ctx.world == 1:
        loader = make_loader(ctx.stream, "train", rows, cfg.batch_size, cfg.num_workers, generator)
        bar = tqdm(loader, desc=desc, leave=False, disable=not ctx.progress)
        return ((len(idx), idx, inputs) for idx, inputs in bar)
    batches = shuffled_batches(len(rows), cfg.batch_size, cfg.num_workers, generator)
    mine = [b[ctx.rank :: ctx.world] for b in batches]
    loader = DataLoader(
        Rows(ctx.stream.train, rows),
        batch_sampler=[m.tolist() for m in mine if len(m)],
        num_workers=cfg.num_workers,
        collate_fn=RowCollate(ctx.stream.collate),
        generator=torch.Generator(),  # its seed draw must not touch the global RNG (as one process's loader)
    )

    def steps() -> Iterator[TrainStep]:
        it = iter(loader)
        for batch, m in zip(batches, mine):
            yield (len(batch), *next(it)) if len(m) else (len(batch), None, None)

    return iter(tqdm(steps(), desc=desc, total=len(batches), leave=False, disable=not ctx.progress))
