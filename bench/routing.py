# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Inference cost of a task-keyed LN bank vs the number of tasks, and what caching the frozen queries saves.

    python bench/routing.py [--tasks 1 5 10 20] [--batch_size 32] [--repeats 3] [--output results/continual/bench_routing.json]

Part 1 (inference): one batch through the plain backbone (no peft) is the unit. For T tasks (random deltas and keys)
it times

- ``two-pass``: ``LNBank``: a frozen query pass, key selection, one routed pass (target <= 2.1x). The routed pass
  sends row ``i`` to task ``i mod T`` whatever the keys chose, so the batch always spans ``min(T, batch)`` tasks: the
  worst case for per-task grouping (random keys on random images pick only one or two tasks);
- ``one-pass``: ``SinglePassLNBank.infer``: per-layer selection in forward pre-hooks, one pass (target <= 1.2x);
- ``every adapter``: running the batch once per task adapter, T passes (measured up to T = 5, T x beyond).

Rounds interleave the variants (plain, two-pass, one-pass) so machine noise hits them alike; the table reports the
median of the per-round ratios.

Part 2 (training): the time per task of the two-pass bank (keys, stage 1, stage 2, evaluation) on random images,
with the frozen queries cached (computed once per sample) vs recomputed at every use (each key-learning epoch, stage 2
and evaluation), as ``RunContext(cache_queries=...)`` does it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from torch.utils.data import Dataset

from lntune.continual import (
    ContinualConfig,
    LNBank,
    RunContext,
    SinglePassLNBank,
    TaskStream,
    as_encoder,
    make_class_incremental_split,
    run_methods,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vit-tiny-patch16-224"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="transformers ViT folder (default: shared ViT-Tiny).")
    p.add_argument("--random_init", action="store_true", help="Same-shape random ViT-Tiny instead of the weights.")
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 5, 10, 20], help="Bank sizes T to time.")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3, help="Timed rounds per T (after one warm-up).")
    p.add_argument("--naive_max_tasks", type=int, default=5, help="Time 'every adapter' up to this T.")
    p.add_argument("--train_tasks", type=int, default=2, help="Part 2: tasks (2 classes each).")
    p.add_argument("--train_per_class", type=int, default=32, help="Part 2: training images per class.")
    p.add_argument("--test_per_class", type=int, default=16, help="Part 2: test images per class.")
    p.add_argument("--key_epochs", type=int, default=5, help="Part 2: key-learning epochs (official: 5).")
    p.add_argument("--skip_training", action="store_true", help="Only part 1.")
    p.add_argument("--output", help="Also write the numbers as JSON here.")
    return p.parse_args()


def load_encoder(args: argparse.Namespace):
    if args.random_init:
        torch.manual_seed(0)
        config = tf.ViTConfig.from_pretrained(args.model)
        return as_encoder(tf.ViTModel(config, add_pooling_layer=False).eval())
    tf.logging.set_verbosity_error()
    return as_encoder(tf.ViTModel.from_pretrained(args.model, add_pooling_layer=False).eval())


def build_bank(cls: type[LNBank], encoder, num_tasks: int) -> LNBank:
    bank = cls(copy.deepcopy(encoder), num_classes=2 * num_tasks)
    g = torch.Generator().manual_seed(num_tasks)
    for t in range(num_tasks):
        bank.add_task([2 * t, 2 * t + 1])
        with torch.no_grad():
            for p in bank.adapter_parameters(t):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return bank.eval()


def two_pass_worst_case(bank: LNBank, x: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Query pass + selection (as `LNBank.__call__`), then a routed pass spread over every task."""
    bank.select(bank.query(pixel_values=x))
    spread = torch.arange(x.shape[0]) % num_tasks
    return bank.logits(bank.routed_features(spread, pixel_values=x))


def timed(fn) -> float:
    tic = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - tic


def inference_table(args: argparse.Namespace, encoder) -> list[dict]:
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    rows = []
    for T in args.tasks:
        two, one = build_bank(LNBank, encoder, T), build_bank(SinglePassLNBank, encoder, T)
        variants = {
            "plain": lambda: encoder(pixel_values=x),
            "two-pass": lambda two=two, T=T: two_pass_worst_case(two, x, T),
            "one-pass": lambda one=one: one.infer(pixel_values=x),
        }
        for fn in variants.values():  # warm-up
            timed(fn)
        ratios: dict[str, list[float]] = {"two-pass": [], "one-pass": []}
        plain_s = []
        for _ in range(args.repeats):
            times = {name: timed(fn) for name, fn in variants.items()}
            plain_s.append(times["plain"])
            for name in ratios:
                ratios[name].append(times[name] / times["plain"])
        with torch.no_grad():
            spread = min(T, args.batch_size)
            one.infer(pixel_values=x)
            spread_one = len(torch.unique(torch.stack(one.last_selection)))
        row = {
            "tasks": T,
            "plain_s": statistics.median(plain_s),
            "two_pass_x": statistics.median(ratios["two-pass"]),
            "one_pass_x": statistics.median(ratios["one-pass"]),
            "tasks_in_batch_two_pass": spread,
            "tasks_in_batch_one_pass": spread_one,
        }
        if T <= args.naive_max_tasks:
            naive = timed(lambda two=two, T=T: [two.task_features(t, pixel_values=x) for t in range(T)])
            row["every_adapter_x"] = naive / statistics.median(plain_s)
            row["every_adapter_measured"] = True
        else:
            row["every_adapter_x"] = float(T)
            row["every_adapter_measured"] = False
        rows.append(row)
        print(
            f"T={T:2d}: plain {row['plain_s']:.2f} s, two-pass {row['two_pass_x']:.2f}x, one-pass "
            f"{row['one_pass_x']:.2f}x, every adapter {row['every_adapter_x']:.2f}x",
            flush=True,
        )
    return rows


class _RandomImages(Dataset):
    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + i)), 0


def _stack(xs):
    return {"pixel_values": torch.stack(xs)}


def training_table(args: argparse.Namespace, encoder) -> dict:
    num_classes = 2 * args.train_tasks
    split = make_class_incremental_split(num_classes, num_tasks=args.train_tasks, seed=None)
    y_train = np.repeat(np.arange(num_classes), args.train_per_class)
    y_test = np.repeat(np.arange(num_classes), args.test_per_class)
    stream = TaskStream(
        split,
        _RandomImages(len(y_train), args.image_size, 1),
        _RandomImages(len(y_test), args.image_size, 2),
        y_train,
        y_test,
        _stack,
    )
    config = ContinualConfig(
        epochs=1, key_epochs=args.key_epochs, batch_size=args.batch_size, rectify_epochs=5, oracle_eval=False
    )
    out = {}
    for cached in (True, False):
        ctx = RunContext(
            stream,
            lambda: copy.deepcopy(encoder),
            config,
            cache_queries=cached,
            log=lambda s: None,
            progress=False,
        )
        tic = time.perf_counter()
        run_methods(ctx, ["ln-bank"])
        total = time.perf_counter() - tic
        out["cached" if cached else "recomputed"] = {
            "per_task_s": total / args.train_tasks,
            "query_forwards": ctx.cache.computed,
        }
        print(f"queries {'cached' if cached else 'recomputed'}: {total / args.train_tasks:.1f} s per task", flush=True)
    out["ratio_recomputed_over_cached"] = out["recomputed"]["per_task_s"] / out["cached"]["per_task_s"]
    return out


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    encoder = load_encoder(args)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
    machine += f"{torch.get_num_threads()} threads"
    print(f"# bench/routing.py on {machine}; batch {args.batch_size} at {args.image_size}px", flush=True)
    rows = inference_table(args, encoder)
    print("\n| tasks T | plain forward (s) | two-pass bank | one-pass bank | every adapter (T passes) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        naive = f"{r['every_adapter_x']:.2f}x" + ("" if r["every_adapter_measured"] else " (T, not timed)")
        print(f"| {r['tasks']} | {r['plain_s']:.2f} | {r['two_pass_x']:.2f}x | {r['one_pass_x']:.2f}x | {naive} |")
    training = None
    if not args.skip_training:
        training = training_table(args, encoder)
        print("\n| queries | time per task (s) | query forwards |")
        print("| --- | --- | --- |")
        for key in ("cached", "recomputed"):
            print(f"| {key} | {training[key]['per_task_s']:.1f} | {training[key]['query_forwards']} |")
        print(f"\nrecomputed / cached = {training['ratio_recomputed_over_cached']:.2f}x")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": machine, "args": vars(args), "inference": rows, "training": training}
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
