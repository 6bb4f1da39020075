# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Training and evaluation of task-keyed LN banks and their baselines, task after task.

Per task ``t`` (the official code's order, De Min et al. 2023):

1. **keys** (two-pass bank): learn task ``t``'s keys by maximising their mean cosine similarity with the frozen
   queries of task ``t``'s samples (:func:`learn_keys`);
2. **stage 1**: train task ``t``'s LN deltas and a classifier on logits restricted to task ``t``'s classes. With
   classifier rectification on (the official ``--unbiased``), this trains the *auxiliary* head (their ``fake_head``)
   and leaves the inference head alone (:func:`train_task_lns`); the single-pass bank adds its layer-key loss here;
3. **stage 2** (classifier rectification): compute once, under no_grad, the features that inference would produce
   for task ``t``'s training samples (selected task's LN values), then train only the inference head on them
   (:func:`rectify_classifier`);
4. **evaluate** on the test samples of every task seen so far (:func:`evaluate`).

Queries depend only on the frozen backbone, so :class:`QueryCache` computes each sample's query once and key
learning, stage 2 and evaluation all read it. Baselines: ``nmc`` (nearest class mean of the frozen queries),
``seq-ln`` (one shared adapter tuned task after task: the lower bound) and ``joint-ln`` (one adapter on all data at
once: the upper bound). :data:`METHODS` maps each method name to its runner; every runner checkpoints after each task
(:mod:`lntune.continual.checkpoint`) and resumes from the latest checkpoint, reseeding per task so that a resumed run
ends exactly where an uninterrupted one does.

Several processes (``RunContext.accelerator``, e.g. under ``accelerate launch`` or ``torchrun``): every process holds
the whole bank and runs the same steps. Frozen passes (queries, stage-2 and layer-key inputs, evaluation) split their
batches round-robin over the processes (each batch as one process would form it) and all-gather the rows back into
order, so every process ends up with the same full tensors; key learning, stage 2, the layer keys and the metrics then
run on every process from those tensors, and rank 0 broadcasts what each stage trained. Stage 1 splits every batch
of the (same on all processes) shuffled order over the processes and sums their gradients, weighted by their share
of the batch: the global batch and its mean loss are those of one process. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .bank import KEY_MODES, LNBank, SinglePassLNBank
from .checkpoint import latest_checkpoint, load_bank, save_bank, task_checkpoint_dir
from .metrics import accuracy_matrix_from_predictions, summarize, task_id_accuracy
from .splits import ClassIncrementalSplit

__all__ = [
    "METHODS",
    "ContinualConfig",
    "Evaluation",
    "MethodResult",
    "QueryCache",
    "RunContext",
    "TaskStream",
    "compare_key_modes",
    "evaluate",
    "image_stream",
    "learn_keys",
    "rectify_classifier",
    "refine_layer_keys",
    "run_methods",
    "text_stream",
    "train_task_lns",
]

RECTIFY_MASKS = ("task", "seen")
PREDICTIONS = ("seen", "task")


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
            `"task"`: argmax over the classes of the task the keys selected. Both are always computed and reported.
        eval_batch_size (`int`): batch size of query, feature and evaluation passes.
        seed (`int`): seeds the class order (in the recipe), the heads, the keys and each task's data order.
        num_workers (`int`): DataLoader workers.
        oracle_eval (`bool`): after the last task, also evaluate the two-pass bank with the true task's LN values.
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

    def __post_init__(self) -> None:
        if self.key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, got {self.key_mode!r}.")
        if self.rectify_mask not in RECTIFY_MASKS:
            raise ValueError(f"rectify_mask must be one of {RECTIFY_MASKS}, got {self.rectify_mask!r}.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}.")
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


# ---------------------------------------------------------------------------------------------------------- data
@dataclass
class TaskStream:
    """The data of a class-incremental run: samples, *incremental* labels, the split, and batching.

    `train[i]` / `test[i]` return `(x, anything)`; only `x` is used (labels come from the label arrays).
    `collate(list_of_x)` builds the model inputs, e.g. `{"pixel_values": ...}` or tokenised text.
    """

    split: ClassIncrementalSplit
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]

    def __post_init__(self) -> None:
        for which in ("train", "test"):
            labels = np.asarray(getattr(self, f"{which}_labels"), dtype=np.int64)
            setattr(self, f"{which}_labels", labels)
            if len(labels) != len(getattr(self, which)):
                raise ValueError(f"{which}_labels has {len(labels)} entries for {len(getattr(self, which))} samples.")
            tasks = self.split.task_of_labels(labels, incremental=True)
            empty = [t for t in range(self.split.num_tasks) if not np.any(tasks == t)]
            if empty:
                raise ValueError(f"Task(s) {empty} have no {which} samples; every task needs data in both splits.")

    @property
    def num_tasks(self) -> int:
        return self.split.num_tasks

    def task_classes(self, t: int) -> list[int]:
        """Incremental labels of task `t`'s classes."""
        start = self.split.num_classes_seen_until(t) - len(self.split.classes_of_task(t))
        return list(range(start, start + len(self.split.classes_of_task(t))))

    def labels(self, which: str) -> np.ndarray:
        return self.train_labels if which == "train" else self.test_labels

    def task_of(self, which: str) -> np.ndarray:
        return self.split.task_of_labels(self.labels(which), incremental=True)

    def indices(self, which: str, t: int, seen: bool = False) -> np.ndarray:
        """Rows of task `t` (or, with `seen=True`, of tasks `0..t`) in `which` ("train"/"test")."""
        tasks = self.task_of(which)
        return np.flatnonzero(tasks <= t if seen else tasks == t)


class _Rows(Dataset):
    def __init__(self, data: Dataset, rows: np.ndarray) -> None:
        self.data, self.rows = data, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        row = int(self.rows[i])
        return row, self.data[row][0]


class _Collate:
    def __init__(self, collate: Callable[[list[Any]], dict[str, torch.Tensor]]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.tensor([r for r, _ in items], dtype=torch.long), self.collate([x for _, x in items])


def _loader(
    stream: TaskStream, which: str, rows: np.ndarray, batch_size: int, num_workers: int, generator=None
) -> DataLoader:
    return DataLoader(
        _Rows(getattr(stream, which), rows),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=num_workers,
        collate_fn=_Collate(stream.collate),
    )


def _stack_pixels(xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack(xs)}


def image_stream(split: ClassIncrementalSplit, train: Any, test: Any, transform: Callable[[Any], Any]) -> TaskStream:
    """A stream over two `ImageSource`s (original labels are mapped to the split's incremental labels)."""
    from .data import ImageClassificationDataset

    return TaskStream(
        split=split,
        train=ImageClassificationDataset(train, transform=transform),
        test=ImageClassificationDataset(test, transform=transform),
        train_labels=split.to_incremental_labels(train.labels),
        test_labels=split.to_incremental_labels(test.labels),
        collate=_stack_pixels,
    )


class _TextData(Dataset):
    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, None]:
        return self.texts[i], None


class TextCollate:
    """Tokenise a list of strings (padding to the longest, truncating at `max_length`)."""

    def __init__(self, tokenizer: Any, max_length: int = 64) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return dict(enc)


def text_stream(
    split: ClassIncrementalSplit, train: Any, test: Any, tokenizer: Any, max_length: int = 64
) -> TaskStream:
    """A stream over two `TextSource`s (e.g. CLINC150's train and test)."""
    return TaskStream(
        split=split,
        train=_TextData(train.texts),
        test=_TextData(test.texts),
        train_labels=split.to_incremental_labels(train.labels),
        test_labels=split.to_incremental_labels(test.labels),
        collate=TextCollate(tokenizer, max_length),
    )


def _to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------------------- context
@dataclass
class RunContext:
    """What the runners share: the data, a factory of fresh frozen backbones, the config and the run's plumbing.

    `make_encoder()` must return a new copy of the same frozen backbone each call (each method adapts its own).
    `after_task(method, t)` runs after each task's checkpoint (tests raise there to simulate a killed run).
    `accelerator`: an `accelerate.Accelerator` (anything with `process_index` and `num_processes`) whose processes
    share the work through an initialised `torch.distributed` group; every process must run the same calls with the
    same context. `None`: one process.
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
        self.timings.setdefault(method, {}).setdefault(f"task_{t}", {})[what] = round(seconds, 3)


def _seed(config: ContinualConfig, t: int, salt: int) -> torch.Generator:
    """Seed torch for task `t` of one method and return a generator for its data order (reproducible on resume)."""
    value = (config.seed * 1_000_003 + 10_007 * (t + 1) + salt) % (2**63)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


# ---------------------------------------------------------------------------------------------------------- processes
def _positions(n: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """Positions (in `0..n-1`) of the batches of `batch_size` that process `rank` of `world` computes: batches
    `rank, rank + world, ...` in order, each as one process forms it (only the last batch is short, and it stays the
    last of its process), so a batched pass gives every row the same values whatever the number of processes."""
    if world == 1:
        return np.arange(n)
    starts = range(rank * batch_size, n, world * batch_size)
    return np.concatenate([np.arange(s, min(s + batch_size, n)) for s in starts] or [np.zeros(0, dtype=np.int64)])


def _comm_device(ctx: RunContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather_rows(ctx: RunContext, local: dict[Any, torch.Tensor], n: int, batch_size: int) -> dict[Any, torch.Tensor]:
    """All-gather what each process computed for its `_positions(n, batch_size, ...)` (`local[k]`: its rows in that
    order) and put the rows back in the order `0..n-1`: every process gets the same full tensors, on `ctx.device`."""
    if ctx.world == 1 or n == 0:
        return local
    specs: list[Any] = [None] * ctx.world
    dist.all_gather_object(specs, [(k, tuple(v.shape[1:]), v.dtype) for k, v in local.items()])
    spec: dict[Any, tuple[tuple[int, ...], torch.dtype]] = {}
    for entries in specs:  # a process that ran no batch may not know every key
        for k, shape, dtype in entries:
            spec.setdefault(k, (shape, dtype))
    counts = [len(_positions(n, batch_size, r, ctx.world)) for r in range(ctx.world)]
    device = _comm_device(ctx)
    out = {}
    for k, (shape, dtype) in spec.items():
        buf = torch.zeros((max(counts), *shape), dtype=dtype, device=device)
        if k in local:
            buf[: len(local[k])] = local[k].to(device)
        parts = [torch.empty_like(buf) for _ in range(ctx.world)]
        dist.all_gather(parts, buf)
        pieces = []
        for i, start in enumerate(range(0, n, batch_size)):  # batch i is the (i // world)-th of process i % world
            first = (i // ctx.world) * batch_size
            pieces.append(parts[i % ctx.world][first : first + min(batch_size, n - start)])
        out[k] = torch.cat(pieces).to(ctx.device)
    return out


def _all_reduce_sum(ctx: RunContext, values: list[float]) -> list[float]:
    """Sums of `values` over the processes (the values themselves with one process)."""
    if ctx.world == 1:
        return values
    flat = torch.tensor(values, dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(flat)
    return flat.tolist()


def _all_reduce_grads(ctx: RunContext, params: list[nn.Parameter]) -> None:
    """Sum the gradients of `params` over the processes; a parameter no process gave a gradient keeps `None`."""
    device = _comm_device(ctx)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([g.reshape(-1).to(device, torch.float32) for g in grads] + [has])
    dist.all_reduce(flat)
    offset = 0
    for p, present in zip(params, flat[-len(params) :].tolist()):
        chunk = flat[offset : offset + p.numel()]
        offset += p.numel()
        p.grad = chunk.view_as(p).to(p.device, p.dtype).clone() if present > 0 else None


def _broadcast_params(ctx: RunContext, params: list[nn.Parameter]) -> None:
    """Give every process rank 0's values of `params` (what a stage trained stays identical on all processes)."""
    if ctx.world == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1).to(_comm_device(ctx), torch.float32) for p in params])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _broadcast_object(ctx: RunContext, obj: Any) -> Any:
    """Rank 0's `obj` on every process (picklable objects)."""
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(ctx: RunContext) -> None:
    if ctx.world > 1:
        dist.barrier()


def _shuffled_batches(n: int, batch_size: int, num_workers: int, generator: torch.Generator) -> list[np.ndarray]:
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


def _train_batches(
    ctx: RunContext, rows: np.ndarray, generator: torch.Generator, desc: str
) -> Iterator[tuple[int, Optional[torch.Tensor], Optional[dict[str, torch.Tensor]]]]:
    """Stage-1 batches of `rows` in a shuffled order drawn from `generator`, with a progress bar: an iterator of
    `(batch size, rows of this process, its inputs)`. Several processes: every process draws the same order and takes
    every `world`-th sample of each batch (`None, None` when a short batch leaves it none)."""
    cfg = ctx.config
    if ctx.world == 1:
        loader = _loader(ctx.stream, "train", rows, cfg.batch_size, cfg.num_workers, generator)
        bar = tqdm(loader, desc=desc, leave=False, disable=not ctx.progress)
        return ((len(idx), idx, inputs) for idx, inputs in bar)
    batches = _shuffled_batches(len(rows), cfg.batch_size, cfg.num_workers, generator)
    mine = [b[ctx.rank :: ctx.world] for b in batches]
    loader = DataLoader(
        _Rows(ctx.stream.train, rows),
        batch_sampler=[m.tolist() for m in mine if len(m)],
        num_workers=cfg.num_workers,
        collate_fn=_Collate(ctx.stream.collate),
        generator=torch.Generator(),  # its seed draw must not touch the global RNG (as one process's loader)
    )

    def steps() -> Iterator[tuple[int, Optional[torch.Tensor], Optional[dict[str, torch.Tensor]]]]:
        it = iter(loader)
        for batch, m in zip(batches, mine):
            yield (len(batch), *next(it)) if len(m) else (len(batch), None, None)

    return iter(tqdm(steps(), desc=desc, total=len(batches), leave=False, disable=not ctx.progress))


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
            self._bank = LNBank(self.ctx.make_encoder(), num_classes=1).to(self.ctx.device).eval()
        return self._bank

    @torch.no_grad()
    def _compute(self, which: str, rows: np.ndarray) -> torch.Tensor:
        ctx, bank = self.ctx, self._query_bank()
        out = []
        size = ctx.config.eval_batch_size
        mine = rows[_positions(len(rows), size, ctx.rank, ctx.world)]
        for _, inputs in _loader(ctx.stream, which, mine, size, ctx.config.num_workers):
            with ctx.autocast():
                out.append(bank.query(**_to(inputs, ctx.device)).float())
        self.computed += len(rows)
        local = torch.cat(out) if out else torch.zeros(0, bank.dim, device=ctx.device)
        return _gather_rows(ctx, {"queries": local}, len(rows), size)["queries"]

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


# ---------------------------------------------------------------------------------------------------------- stages
def _enable_grads(params: list[nn.Parameter]) -> None:
    for p in params:
        p.requires_grad_(True)


def _done(bank: LNBank) -> None:
    bank.eval()
    bank.freeze()


def _restricted_ce(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[int], smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the columns `classes` only (the official code's logit mask, exact also with label
    smoothing, which would put mass on `-inf` logits otherwise). Returns (loss, accuracy)."""
    cls = torch.tensor(classes, device=logits.device)
    position = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long, device=logits.device)
    position[cls] = torch.arange(len(classes), device=logits.device)
    target = position[labels]
    if (target < 0).any():
        raise ValueError(f"A label lies outside the classes the logits are restricted to ({classes[:10]} ...).")
    sub = logits.float().index_select(1, cls)
    loss = F.cross_entropy(sub, target, label_smoothing=smoothing)
    return loss, (sub.argmax(-1) == target).float().mean()


def learn_keys(bank: LNBank, t: int, ctx: RunContext, generator: torch.Generator) -> float:
    """Stage 1a: learn task `t`'s keys from the (cached) frozen queries of its training samples.

    Adam on the negative mean cosine similarity, `key_epochs` epochs of shuffled batches. Returns the final mean
    cosine similarity between the queries and their key.
    """
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    labels = torch.from_numpy(ctx.stream.train_labels[rows])
    params = bank.key_parameters(t)
    _enable_grads(params)
    opt = torch.optim.Adam(params, lr=cfg.resolved_key_lr)
    for _ in range(cfg.resolved_key_epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), cfg.batch_size):
            batch = order[start : start + cfg.batch_size].numpy()
            loss = bank.key_loss(ctx.cache.get("train", rows[batch]), t, labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _broadcast_params(ctx, params)  # every process ran the same steps on the same queries: guard against drift
    with torch.no_grad():
        sim = -float(bank.key_loss(ctx.cache.get("train", rows), t, labels))
    _done(bank)
    return sim


def train_task_lns(
    bank: LNBank,
    t: int,
    ctx: RunContext,
    generator: torch.Generator,
    classes: list[int],
    rows: Optional[np.ndarray] = None,
    adapter_task: Optional[int] = None,
    aux_head: bool = False,
) -> dict[str, float]:
    """Stage 1: train the LN deltas of `adapter_task` (default `t`) and the head rows of `classes` with the
    cross-entropy restricted to `classes`, on `rows` (default: task `t`'s training samples).

    `aux_head=True` trains the auxiliary head (classifier rectification retrains the real one in stage 2). A bank
    whose `task_features` returns a key loss (single-pass) adds it, so its layer keys learn here too (at `key_lr`).
    Several processes split every batch and sum their gradients, each weighted by its share of the batch.
    """
    cfg = ctx.config
    adapter_task = t if adapter_task is None else adapter_task
    rows = ctx.stream.indices("train", t) if rows is None else rows
    head = bank.aux_classifier if aux_head else bank.classifier
    groups = [{"params": bank.adapter_parameters(adapter_task) + list(head.parameters()), "lr": cfg.stage1_lr}]
    if isinstance(bank, SinglePassLNBank):  # its layer keys learn here, at the key learning rate
        groups.append({"params": bank.key_parameters(adapter_task), "lr": cfg.resolved_key_lr})
    bank.train()
    params = [p for g in groups for p in g["params"]]
    _enable_grads(params)
    opt = torch.optim.Adam(groups)
    labels_all = torch.from_numpy(ctx.stream.train_labels)
    stats = {"loss": float("nan"), "acc": float("nan")}
    for epoch in range(cfg.epochs):
        total, acc, n = 0.0, 0.0, 0
        for size, idx, inputs in _train_batches(
            ctx, rows, generator, f"task {t} stage 1 epoch {epoch + 1}/{cfg.epochs}"
        ):
            opt.zero_grad(set_to_none=True)
            if idx is not None:
                labels = labels_all[idx].to(ctx.device)
                with ctx.autocast():
                    features, extra = bank.task_features(adapter_task, **_to(inputs, ctx.device))
                loss, batch_acc = _restricted_ce(head(features.float()), labels, classes, cfg.label_smoothing)
                if extra is not None:
                    loss = loss + extra
                # both terms are batch means: this process's share of the batch mean is its mean times its share
                (loss if ctx.world == 1 else loss * (len(idx) / size)).backward()
                total += float(loss.detach()) * len(idx)
                acc += float(batch_acc) * len(idx)
                n += len(idx)
            if ctx.world > 1:
                _all_reduce_grads(ctx, params)
            opt.step()
        total, acc, n = _all_reduce_sum(ctx, [total, acc, n])
        stats = {"loss": total / max(n, 1), "acc": acc / max(n, 1)}
    _broadcast_params(ctx, params)
    _done(bank)
    return stats


def refine_layer_keys(bank: SinglePassLNBank, t: int, ctx: RunContext, generator: torch.Generator) -> float:
    """Single-pass bank: learn task `t`'s layer keys to convergence on the [CLS] inputs of every norm when its
    training samples run with task `t`'s final LN values (collected once, no grad). Returns the final mean cosine."""
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    bank.eval()
    collected: dict[int, list[torch.Tensor]] = {}
    mine = rows[_positions(len(rows), cfg.eval_batch_size, ctx.rank, ctx.world)]
    for _, inputs in _loader(ctx.stream, "train", mine, cfg.eval_batch_size, cfg.num_workers):
        with ctx.autocast():
            for i, tokens in bank.layer_inputs(t, **_to(inputs, ctx.device)).items():
                collected.setdefault(i, []).append(tokens.float())
    tokens = _gather_rows(ctx, {i: torch.cat(v) for i, v in collected.items()}, len(rows), cfg.eval_batch_size)
    params = bank.key_parameters(t)
    _enable_grads(params)
    opt = torch.optim.Adam(params, lr=cfg.resolved_key_lr)
    for _ in range(cfg.layer_key_epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), cfg.batch_size):
            b = order[start : start + cfg.batch_size].to(ctx.device)
            loss = bank.layer_key_loss(t, {i: v[b] for i, v in tokens.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _broadcast_params(ctx, params)
    with torch.no_grad():
        sim = -float(bank.layer_key_loss(t, tokens))
    _done(bank)
    return sim


@torch.no_grad()
def _inference_features(
    bank: LNBank, ctx: RunContext, which: str, rows: np.ndarray, upto: int, shared_adapter: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Features (and selected tasks) of `rows` with the LN values inference picks among tasks `0..upto`; several
    processes share the batches and all get every row."""
    bank.eval()
    size = ctx.config.eval_batch_size
    mine = _positions(len(rows), size, ctx.rank, ctx.world)
    queries = None
    if not shared_adapter and not isinstance(bank, SinglePassLNBank):  # outside the loop: may involve every process
        queries = ctx.cache.get(which, rows)[torch.from_numpy(mine).to(ctx.device)]
    feats, tasks, done = [], [], 0
    loader = _loader(ctx.stream, which, rows[mine], size, ctx.config.num_workers)
    for idx, inputs in tqdm(loader, desc=f"{which} features", leave=False, disable=not ctx.progress):
        inputs = _to(inputs, ctx.device)
        with ctx.autocast():
            if shared_adapter:
                f, _ = bank.task_features(0, **inputs)
                task_ids = None
            elif isinstance(bank, SinglePassLNBank):
                f, task_ids = bank.infer(upto=upto, **inputs)
            else:
                f, task_ids = bank.infer(queries=queries[done : done + len(idx)], upto=upto, **inputs)
        done += len(idx)
        feats.append(f.float())
        if task_ids is not None:
            tasks.append(task_ids.cpu())
    local = {"features": torch.cat(feats) if feats else torch.zeros(0, bank.dim, device=ctx.device)}
    if tasks:
        local["tasks"] = torch.cat(tasks)
    out = _gather_rows(ctx, local, len(rows), size)
    return out["features"], (out["tasks"].cpu() if "tasks" in out else None)


def rectify_classifier(bank: LNBank, t: int, ctx: RunContext, generator: torch.Generator) -> dict[str, float]:
    """Stage 2: retrain only `bank.classifier` on the features inference would give task `t`'s training samples.

    The features are computed once (no_grad, routed pass); the logits cover task `t`'s classes (`rectify_mask=
    "task"`, the official code) or every seen class (`"seen"`).
    """
    cfg = ctx.config
    rows = ctx.stream.indices("train", t)
    features, _ = _inference_features(bank, ctx, "train", rows, upto=t)
    labels = torch.from_numpy(ctx.stream.train_labels[rows]).to(ctx.device)
    classes = ctx.stream.task_classes(t) if cfg.rectify_mask == "task" else bank.seen_classes(t)
    params = list(bank.classifier.parameters())
    _enable_grads(params)
    opt = torch.optim.Adam(params, lr=cfg.rectify_lr)
    stats = {"loss": float("nan"), "acc": float("nan")}
    for _ in range(cfg.rectify_epochs):
        order = torch.randperm(len(rows), generator=generator)
        total, acc = 0.0, 0.0
        for start in range(0, len(rows), cfg.batch_size):
            b = order[start : start + cfg.batch_size].to(ctx.device)
            loss, batch_acc = _restricted_ce(bank.classifier(features[b]), labels[b], classes, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            acc += float(batch_acc) * len(b)
        stats = {"loss": total / len(rows), "acc": acc / len(rows)}
    _broadcast_params(ctx, params)
    _done(bank)
    return stats


@dataclass
class Evaluation:
    """Predictions on the test samples of tasks `0..t` (row order): over all seen classes (`pred_seen`), within
    the selected task's classes (`pred_task`, None without selection) and the selected tasks (`task_pred`)."""

    pred_seen: np.ndarray
    pred_task: Optional[np.ndarray]
    task_pred: Optional[np.ndarray]

    def pred(self, prediction: str) -> np.ndarray:
        return self.pred_task if (prediction == "task" and self.pred_task is not None) else self.pred_seen


def evaluate(bank: LNBank, t: int, ctx: RunContext, classes: list[int], shared_adapter: bool = False) -> Evaluation:
    """Evaluate on the test samples of tasks `0..t`; `classes` are the seen classes (incremental labels)."""
    rows = ctx.stream.indices("test", t, seen=True)
    features, tasks = _inference_features(bank, ctx, "test", rows, upto=t, shared_adapter=shared_adapter)
    with torch.no_grad():
        logits = bank.classifier(features)
        seen = logits.index_select(1, torch.tensor(classes, device=features.device))
        pred_seen = np.asarray(classes)[seen.argmax(-1).cpu().numpy()]
        pred_task = None
        if tasks is not None:
            pred_task = bank.logits(features, upto=t, task_ids=tasks).argmax(-1).cpu().numpy()
    return Evaluation(pred_seen, pred_task, None if tasks is None else tasks.numpy())


# ---------------------------------------------------------------------------------------------------------- runners
_HEADLINE = ("final_avg_acc", "final_avg_acc_sample", "avg_inc_acc", "forgetting", "acc_matrix")


@dataclass
class MethodResult:
    """One method's outcome: the `summarize` dict (or the joint upper bound's final accuracies) plus extras."""

    method: str
    summary: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.summary, **self.extras}


def _incremental_summary(
    ctx: RunContext, step_preds: list[list[int]], step_task_preds: Optional[list[list[int]]]
) -> dict[str, Any]:
    """`summarize` of per-step predictions (and selected tasks, for the task-id accuracy)."""
    stream = ctx.stream
    preds, labels, task_ids, tid = [], [], [], []
    for t in range(stream.num_tasks):
        rows = stream.indices("test", t, seen=True)
        true_tasks = stream.task_of("test")[rows]
        preds.append(np.asarray(step_preds[t]))
        labels.append(stream.test_labels[rows])
        task_ids.append(true_tasks)
        if step_task_preds is not None:
            tid.append(task_id_accuracy(np.asarray(step_task_preds[t]), true_tasks))
    acc, n_test = accuracy_matrix_from_predictions(preds, labels, task_ids)
    return summarize(acc, n_test, tid if step_task_preds is not None else None)


def _resume_point(ctx: RunContext, method: str) -> Optional[tuple[int, Path]]:
    root = ctx.checkpoint_dir(method)
    point = latest_checkpoint(root) if (ctx.resume and root is not None and ctx.is_main) else None
    return _broadcast_object(ctx, point)  # every process resumes from the checkpoint rank 0 sees


def _finish_task(ctx: RunContext, method: str, t: int, bank: LNBank, state: dict[str, Any]) -> None:
    root = ctx.checkpoint_dir(method)
    if root is not None:
        if ctx.is_main:
            save_bank(bank, task_checkpoint_dir(root, t), state)
        _barrier(ctx)  # the checkpoint is in place before any process moves on (or is killed)
    if ctx.after_task is not None:
        ctx.after_task(method, t)


def _build_bank(ctx: RunContext, cls: type[LNBank], key_mode: str = "task") -> LNBank:
    return cls(ctx.make_encoder(), num_classes=ctx.stream.split.num_classes, key_mode=key_mode, seed=ctx.config.seed)


def _run_bank(ctx: RunContext, method: str, single_pass: bool) -> MethodResult:
    cfg, stream = ctx.config, ctx.stream
    cls = SinglePassLNBank if single_pass else LNBank
    key_mode = "task" if single_pass else cfg.key_mode
    resume = _resume_point(ctx, method)
    state: dict[str, Any] = {"preds": [], "preds_other": [], "task_preds": [], "stats": []}
    other = next(p for p in PREDICTIONS if p != cfg.prediction)
    if resume is not None:
        bank, state = load_bank(resume[1], ctx.make_encoder(), device=ctx.device)
        start = resume[0] + 1
        ctx.log(f"[{method}] resumed after task {resume[0]} from {resume[1]}")
    else:
        bank, start = _build_bank(ctx, cls, key_mode).to(ctx.device), 0
    salt = 1 if single_pass else 0
    for t in range(start, stream.num_tasks):
        generator = _seed(cfg, t, salt)
        bank.add_task(stream.task_classes(t))
        stats: dict[str, Any] = {}
        if not single_pass:
            tic = time.perf_counter()
            stats["key_sim"] = learn_keys(bank, t, ctx, generator)
            ctx.time(method, t, "keys_s", time.perf_counter() - tic)
        tic = time.perf_counter()
        stats["stage1"] = train_task_lns(bank, t, ctx, generator, stream.task_classes(t), aux_head=cfg.rectify)
        ctx.time(method, t, "stage1_s", time.perf_counter() - tic)
        if single_pass and cfg.layer_key_epochs:
            tic = time.perf_counter()
            stats["layer_key_sim"] = refine_layer_keys(bank, t, ctx, generator)
            ctx.time(method, t, "layer_keys_s", time.perf_counter() - tic)
        if cfg.rectify:
            tic = time.perf_counter()
            stats["stage2"] = rectify_classifier(bank, t, ctx, generator)
            ctx.time(method, t, "stage2_s", time.perf_counter() - tic)
        tic = time.perf_counter()
        ev = evaluate(bank, t, ctx, bank.seen_classes(t))
        ctx.time(method, t, "eval_s", time.perf_counter() - tic)
        state["preds"].append(ev.pred(cfg.prediction).tolist())
        state["preds_other"].append(ev.pred(other).tolist())
        state["task_preds"].append(ev.task_pred.tolist())
        state["stats"].append(stats)
        ctx.log(f"[{method}] task {t}: {_step_line(ctx, state, t)} stats={_round(stats)}")
        _finish_task(ctx, method, t, bank, state)
    summary = _incremental_summary(ctx, state["preds"], state["task_preds"])
    alternative = _incremental_summary(ctx, state["preds_other"], None)
    extras: dict[str, Any] = {
        "key_mode": key_mode,
        "prediction": cfg.prediction,
        "other_prediction": {"prediction": other, **{k: alternative[k] for k in _HEADLINE}},
        "train_stats": state["stats"],
    }
    if single_pass:
        extras["task_id_source"] = "the last norm's per-layer selection"
    elif cfg.oracle_eval:
        extras["final_acc_oracle_task"] = _oracle_accuracy(bank, ctx)
    return MethodResult(method, summary, extras)


def _step_line(ctx: RunContext, state: dict[str, Any], t: int) -> str:
    rows = ctx.stream.indices("test", t, seen=True)
    labels = ctx.stream.test_labels[rows]
    line = f"acc on tasks 0..{t} = {float(np.mean(np.asarray(state['preds'][t]) == labels)):.4f}"
    if state.get("preds_other"):
        line += f" (other prediction: {float(np.mean(np.asarray(state['preds_other'][t]) == labels)):.4f})"
    if state.get("task_preds"):
        tid = task_id_accuracy(np.asarray(state["task_preds"][t]), ctx.stream.task_of("test")[rows])
        line += f", task-id acc = {tid:.4f}"
    return line


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


@torch.no_grad()
def _oracle_accuracy(bank: LNBank, ctx: RunContext) -> float:
    """Final accuracy on all test samples when each runs with its *true* task's LN values (routing upper bound),
    under the configured prediction rule (`"task"`: argmax within the true task's classes)."""
    stream = ctx.stream
    rows = stream.indices("test", stream.num_tasks - 1, seen=True)
    true_tasks = torch.from_numpy(stream.task_of("test"))
    correct = 0
    bank.eval()
    size = ctx.config.eval_batch_size
    mine = rows[_positions(len(rows), size, ctx.rank, ctx.world)]
    for idx, inputs in _loader(stream, "test", mine, size, ctx.config.num_workers):
        with ctx.autocast():
            f = bank.routed_features(true_tasks[idx], **_to(inputs, ctx.device))
        gate = true_tasks[idx] if ctx.config.prediction == "task" else None
        pred = bank.logits(f.float(), task_ids=gate).argmax(-1).cpu().numpy()
        correct += int(np.sum(pred == stream.test_labels[idx.numpy()]))
    return int(round(_all_reduce_sum(ctx, [correct])[0])) / len(rows)


def run_ln_bank(ctx: RunContext) -> MethodResult:
    """The two-pass bank (the paper): keys on frozen queries, per-task LNs, classifier rectification."""
    return _run_bank(ctx, "ln-bank", single_pass=False)


def run_ln_bank_1pass(ctx: RunContext) -> MethodResult:
    """The single-pass bank: per-layer keys on each norm's [CLS] input, one forward pass at inference."""
    return _run_bank(ctx, "ln-bank-1pass", single_pass=True)


def run_nmc(ctx: RunContext) -> MethodResult:
    """Nearest class mean (cosine) on the frozen queries: no training, no forgetting of the backbone."""
    stream = ctx.stream
    state: dict[str, Any] = {"preds": [], "task_preds": []}
    task_of_class = np.concatenate([[t] * len(stream.task_classes(t)) for t in range(stream.num_tasks)])
    means = []
    for t in range(stream.num_tasks):
        rows = stream.indices("train", t)
        q = F.normalize(ctx.cache.get("train", rows), dim=-1)
        labels = torch.from_numpy(stream.train_labels[rows]).to(q.device)
        for c in stream.task_classes(t):
            means.append(F.normalize(q[labels == c].mean(0), dim=-1))
        test_rows = stream.indices("test", t, seen=True)
        sim = F.normalize(ctx.cache.get("test", test_rows), dim=-1) @ torch.stack(means).T
        pred = sim.argmax(-1).cpu().numpy()  # classes are numbered in task order, so column c is class c
        state["preds"].append(pred.tolist())
        state["task_preds"].append(task_of_class[pred].tolist())
        ctx.log(f"[nmc] task {t}: {_step_line(ctx, state, t)}")
    summary = _incremental_summary(ctx, state["preds"], state["task_preds"])
    return MethodResult("nmc", summary, {"task_id_source": "nearest class"})


def _shared_bank(ctx: RunContext, method: str) -> tuple[LNBank, int, dict[str, Any]]:
    """One shared adapter over all classes (seq-ln / joint-ln), fresh or resumed."""
    resume = _resume_point(ctx, method)
    if resume is not None:
        bank, state = load_bank(resume[1], ctx.make_encoder(), device=ctx.device)
        ctx.log(f"[{method}] resumed after task {resume[0]} from {resume[1]}")
        return bank, resume[0] + 1, state
    bank = _build_bank(ctx, LNBank).to(ctx.device)
    bank.add_task(list(range(ctx.stream.split.num_classes)))
    return bank, 0, {"preds": [], "stats": []}


def run_seq_ln(ctx: RunContext) -> MethodResult:
    """Lower bound: one adapter and one head tuned task after task (logits restricted to the current task)."""
    cfg, stream = ctx.config, ctx.stream
    bank, start, state = _shared_bank(ctx, "seq-ln")
    for t in range(start, stream.num_tasks):
        generator = _seed(cfg, t, 2)
        tic = time.perf_counter()
        stats = train_task_lns(bank, t, ctx, generator, stream.task_classes(t), adapter_task=0)
        ctx.time("seq-ln", t, "stage1_s", time.perf_counter() - tic)
        tic = time.perf_counter()
        seen = [c for s in range(t + 1) for c in stream.task_classes(s)]
        pred = evaluate(bank, t, ctx, seen, shared_adapter=True).pred_seen
        ctx.time("seq-ln", t, "eval_s", time.perf_counter() - tic)
        state["preds"].append(pred.tolist())
        state["stats"].append({"stage1": stats})
        ctx.log(f"[seq-ln] task {t}: {_step_line(ctx, state, t)} stats={_round(stats)}")
        _finish_task(ctx, "seq-ln", t, bank, state)
    summary = _incremental_summary(ctx, state["preds"], None)
    return MethodResult("seq-ln", summary, {"train_stats": state["stats"]})


def run_joint_ln(ctx: RunContext) -> MethodResult:
    """Upper bound: one adapter and one head tuned on all tasks' data at once (all classes); final accuracy only."""
    cfg, stream = ctx.config, ctx.stream
    last = stream.num_tasks - 1
    bank, start, state = _shared_bank(ctx, "joint-ln")
    if start == 0:
        generator = _seed(cfg, 0, 3)
        rows = stream.indices("train", last, seen=True)
        tic = time.perf_counter()
        stats = train_task_lns(bank, last, ctx, generator, bank.seen_classes(), rows=rows, adapter_task=0)
        ctx.time("joint-ln", 0, "stage1_s", time.perf_counter() - tic)
        tic = time.perf_counter()
        pred = evaluate(bank, last, ctx, bank.seen_classes(), shared_adapter=True).pred_seen
        ctx.time("joint-ln", 0, "eval_s", time.perf_counter() - tic)
        state = {"preds": pred.tolist(), "stats": [{"stage1": stats}]}
        _finish_task(ctx, "joint-ln", last, bank, state)
    rows = stream.indices("test", last, seen=True)
    pred, labels, tasks = np.asarray(state["preds"]), stream.test_labels[rows], stream.task_of("test")[rows]
    per_task = [float(np.mean(pred[tasks == t] == labels[tasks == t])) for t in range(stream.num_tasks)]
    summary = {
        "num_tasks": stream.num_tasks,
        "final_avg_acc": float(np.mean(per_task)),
        "final_avg_acc_sample": float(np.mean(pred == labels)),
        "acc_final_per_task": per_task,
        "n_test": [int(np.sum(tasks == t)) for t in range(stream.num_tasks)],
        "task_id_acc": None,
    }
    ctx.log(f"[joint-ln] final acc = {summary['final_avg_acc']:.4f}")
    return MethodResult("joint-ln", summary, {"upper_bound": True, "train_stats": state["stats"]})


METHODS: dict[str, Callable[[RunContext], MethodResult]] = {
    "ln-bank": run_ln_bank,
    "ln-bank-1pass": run_ln_bank_1pass,
    "nmc": run_nmc,
    "seq-ln": run_seq_ln,
    "joint-ln": run_joint_ln,
}


def compare_key_modes(ctx: RunContext) -> dict[str, list[float]]:
    """Task-id accuracy per step of both key modes (`"task"`, `"class"`) on the cached test queries: key learning
    exactly as in the bank's stage 1a, no LN training needed (selection only reads frozen queries)."""
    stream, cfg = ctx.stream, ctx.config
    out: dict[str, list[float]] = {}
    encoder = ctx.make_encoder()
    for mode in KEY_MODES:
        bank = LNBank(copy.deepcopy(encoder), num_classes=stream.split.num_classes, key_mode=mode, seed=cfg.seed)
        bank.to(ctx.device)
        out[mode] = []
        for t in range(stream.num_tasks):
            generator = _seed(cfg, t, 0)
            bank.add_task(stream.task_classes(t))
            learn_keys(bank, t, ctx, generator)
            rows = stream.indices("test", t, seen=True)
            pred = bank.select(ctx.cache.get("test", rows), upto=t).cpu().numpy()
            out[mode].append(task_id_accuracy(pred, stream.task_of("test")[rows]))
    return out


def run_methods(ctx: RunContext, methods: Sequence[str]) -> dict[str, MethodResult]:
    """Run `methods` (names in :data:`METHODS`) one after the other, sharing the query cache."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {sorted(METHODS)}.")
    results = {}
    for m in methods:
        tic = time.perf_counter()
        results[m] = METHODS[m](ctx)
        ctx.timings.setdefault(m, {})["total_s"] = round(time.perf_counter() - tic, 3)
    return results
