# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""What every runner of a continual run shares: :class:`RunContext` (data, backbone factory, config, devices,
checkpoints, processes, logging, timings), the :class:`QueryCache` of frozen queries, and per-task seeding."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from .bank import LNBank
from .config import ContinualConfig
from .distributed import gather_rows, positions
from .stream import TaskStream, make_loader

__all__ = ["QueryCache", "RunContext", "seed_task"]


@dataclass
class RunContext:
    """What the runners share: the data, a factory of fresh frozen backbones, the config and the run's plumbing.

    `make_encoder()` must return a new copy of the same frozen backbone each call (each method adapts its own).
    `after_task(method, t)` runs after each task's checkpoint (tests raise there to simulate a killed run).
    `accelerator`: an `accelerate.Accelerator` (anything with `process_index` and `num_processes`, once accelerate's
    `PartialState` holds the process group: :mod:`lntune.continual.distributed` uses accelerate's collectives); every
    process must run the same calls with the same context. `None`: one process.
    """

    stream: TaskStream
    make_encoder: Callable[[], nn.Module]
    config: ContinualConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint_root: Optional[Path] = None
    resume: bool = False
    cache_queries: bool = True
    autocast: Callable[[], AbstractContextManager] = nullcontext
    after_task: Optional[Callable[[str, int], None]] = None
    log: Callable[[str], None] = print
    progress: bool = True
    accelerator: Optional[Any] = None
    timings: dict[str, Any] = field(default_factory=dict)
    _cache: Optional[QueryCache] = None

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cache(self) -> QueryCache:
        """The shared query cache (built on first use with a frozen backbone of its own)."""
        if self._cache is None:
            self._cache = QueryCache(self, enabled=self.cache_queries)
        return self._cache

    def checkpoint_dir(self, method: str) -> Optional[Path]:
        return None if self.checkpoint_root is None else Path(self.checkpoint_root) / method

    def time(self, method: str, t: int, what: str, seconds: float) -> None:
        """Record `seconds` as `timings[method]["task_<t>"][what]` (kept out of metrics.json: not deterministic)."""
        self.timings.setdefault(method, {}).setdefault(f"task_{t}", {})[what] = round(seconds, 3)

    @contextmanager
    def timed(self, method: str, t: int, what: str) -> Iterator[None]:
        """Time the block and :meth:`time` it (nothing is recorded if it raises)."""
        tic = time.perf_counter()
        yield
        self.time(method, t, what, time.perf_counter() - tic)


def seed_task(config: ContinualConfig, t: int, salt: int) -> torch.Generator:
    """Seed torch for task `t` of one method and return a generator for its data order (reproducible on resume)."""
    value = (config.seed * 1_000_003 + 10_007 * (t + 1) + salt) % (2**63)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


class QueryCache:
    """Frozen queries of every sample, computed once on first use (`enabled=False`: recomputed at every call, for
    benchmarking). Queries come from an un-adapted copy of the backbone, in eval mode. Several processes: each
    computes its share of the batches and every process holds all queries (so every process must make the same calls).
    `computed` counts the queries computed by all processes together."""

    def __init__(self, ctx: RunContext, enabled: bool = True) -> None:
        self.ctx = ctx
        self.enabled = enabled
        self._bank: Optional[LNBank] = None
        self._store: dict[str, torch.Tensor] = {}
        self.computed = 0  # number of query forwards run (to measure the saving)

    def _query_bank(self) -> LNBank:
        if self._bank is None:
            layers = self.ctx.config.query_layers
            self._bank = LNBank(self.ctx.make_encoder(), num_classes=1, query_layers=layers).to(self.ctx.device).eval()
        return self._bank

    @torch.no_grad()
    def _compute(self, which: str, rows: np.ndarray) -> torch.Tensor:
        ctx, bank = self.ctx, self._query_bank()
        out = []
        size = ctx.config.eval_batch_size
        mine = rows[positions(len(rows), size, ctx.rank, ctx.world)]
        for _, inputs in make_loader(ctx.stream, which, mine, size, ctx.config.num_workers):
            with ctx.autocast():
                out.append(bank.query(**send_to_device(inputs, ctx.device)).float())
        self.computed += len(rows)
        local = torch.cat(out) if out else torch.zeros(0, bank.query_dim, device=ctx.device)
        return gather_rows(ctx, {"queries": local}, len(rows), size)["queries"]

    def get(self, which: str, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Queries of `rows` of `which` ("train"/"test"), as a `(len(rows), dim)` float tensor on the device.

        The first call for a split computes the whole split in row order, so every query is computed in the same
        batch whatever the order of requests (a resumed run then sees bit-identical queries)."""
        rows = np.asarray(rows.cpu() if torch.is_tensor(rows) else rows, dtype=np.int64)
        if not self.enabled:
            return self._compute(which, rows)
        if which not in self._store:
            self._store[which] = self._compute(which, np.arange(len(self.ctx.stream.labels(which))))
        return self._store[which][torch.from_numpy(rows).to(self._store[which].device)]
