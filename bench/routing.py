# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Inference cost of a task-keyed LN bank vs the number of tasks, and what caching the frozen queries saves.

    python bench/routing.py [--tasks 1 5 10 20] [--batch_size 32] [--repeats 3] [--selection_layers 9 10 11]
        [--runs RUN_DIR ...] [--output results/continual/bench_routing.json]

Part 1 (inference): one batch through the plain backbone (no peft) is the unit. For T tasks (random deltas and keys)
it times

- ``two-pass``: ``LNBank``: a frozen query pass, key selection, one routed pass (target <= 2.1x). The routed pass
  sends row ``i`` to task ``i mod T`` whatever the keys chose, so the batch always spans ``min(T, batch)`` tasks: the
  worst case for per-task grouping (random keys on random images pick only one or two tasks);
- ``one-pass L``: ``LateSelectionLNBank.infer`` (``ln-bank-1pass``) for each ``--selection_layers`` L: frozen blocks
  up to L, LDA task choice on the [CLS] entering block L (statistics fitted on random labels, so a batch spreads over
  the tasks), task LNs after it; one pass (target <= 1.2x);
- ``layerwise``: ``SinglePassLNBank.infer`` (``ln-bank-layerwise``): per-layer selection in forward pre-hooks;
- ``every adapter``: running the batch once per task adapter, T passes (measured up to T = 5, T x beyond).

Rounds interleave the variants (plain, two-pass, one-pass) so machine noise hits them alike; the table reports the
median of the per-round ratios. ``--runs DIR ...`` adds accuracy against L: the ``ln-bank-1pass`` entry of each run's
``metrics.json`` (final accuracy, task-id accuracy, oracle-task accuracy, prediction rules), next to its cost.

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
    LateSelectionLNBank,
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
    p.add_argument("--selection_layers", type=int, nargs="+", default=[9, 10, 11], help="L values of the 1-pass bank.")
    p.add_argument("--runs", nargs="*", default=[], help="run.py output folders with an ln-bank-1pass result.")
    p.add_argument("--output", help="Also write the numbers as JSON here.")
    return p.parse_args()


def load_encoder(args: argparse.Namespace):
    if args.random_init:
        torch.manual_seed(0)
        config = tf.ViTConfig.from_pretrained(args.model)
        return as_encoder(tf.ViTModel(config, add_pooling_layer=False).eval())
    tf.logging.set_verbosity_error()
    return as_encoder(tf.ViTModel.from_pretrained(args.model, add_pooling_layer=False).eval())


def build_bank(cls: type[LNBank], encoder, num_tasks: int, **kwargs) -> LNBank:
    bank = cls(copy.deepcopy(encoder), num_classes=2 * num_tasks, **kwargs)
    g = torch.Generator().manual_seed(num_tasks)
    for t in range(num_tasks):
        bank.add_task([2 * t, 2 * t + 1])
        with torch.no_grad():
            for p in bank.adapter_parameters(t):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return bank.eval()


def late_bank(encoder, num_tasks: int, layer: int, x: torch.Tensor) -> LateSelectionLNBank:
    """A late-selection bank whose LDA statistics are fitted on `x`'s layer-L features with random labels."""
    bank = build_bank(LateSelectionLNBank, encoder, num_tasks, selection_layer=layer)
    labels = torch.randint(0, 2 * num_tasks, (len(x),), generator=torch.Generator().manual_seed(layer))
    labels[: 2 * num_tasks] = torch.arange(min(2 * num_tasks, len(x)))[: len(labels[: 2 * num_tasks])]
    bank.fit_router(bank.selection_features(pixel_values=x), labels)
    return bank


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
        late = {L: late_bank(encoder, T, L, x) for L in args.selection_layers}
        variants = {
            "plain": lambda: encoder(pixel_values=x),
            "two-pass": lambda two=two, T=T: two_pass_worst_case(two, x, T),
            "one-pass": lambda one=one: one.infer(pixel_values=x),
            **{f"late-{L}": (lambda b=b: b.infer(pixel_values=x)) for L, b in late.items()},
        }
        for fn in variants.values():  # warm-up
            timed(fn)
        ratios: dict[str, list[float]] = {name: [] for name in variants if name != "plain"}
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
            "late_x": {L: statistics.median(ratios[f"late-{L}"]) for L in late},
            "tasks_in_batch_late": {L: len(torch.unique(b.infer(pixel_values=x)[1])) for L, b in late.items()},
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
            f"T={T:2d}: plain {row['plain_s']:.2f} s, two-pass {row['two_pass_x']:.2f}x, layerwise "
            f"{row['one_pass_x']:.2f}x, late {row['late_x']}, every adapter {row['every_adapter_x']:.2f}x",
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


def accuracy_vs_layer(runs: list[str], rows: list[dict]) -> list[dict]:
    """The `ln-bank-1pass` results of `runs` (run.py output folders) by selection layer, with the cost measured at
    the largest timed T for that L (if timed); printed as a table."""
    out = []
    for run in runs:
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        m = metrics["methods"]["ln-bank-1pass"]
        L = m["selection_layer"]
        cost = next((r["late_x"][L] for r in reversed(rows) if L in r["late_x"]), None)
        rules = {rule: v["final_avg_acc"] for rule, v in m.get("predictions", {}).items()}
        out.append({"run": run, "selection_layer": L, "cost_x": cost, "final_avg_acc": m["final_avg_acc"],
                    "task_id_acc": m["task_id_acc"][-1], "oracle": m.get("final_acc_oracle_task"), "rules": rules,
                    "prediction": m["prediction"], "seed": metrics["seed"]})  # fmt: skip
    if out:
        print("\n| L | seed | cost (x plain) | final avg acc | task-id acc | oracle-task acc | every rule |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in sorted(out, key=lambda r: (r["selection_layer"], r["seed"])):
            cost = "—" if r["cost_x"] is None else f"{r['cost_x']:.2f}x"
            rules = ", ".join(f"{k} {100 * v:.1f}" for k, v in r["rules"].items())
            print(f"| {r['selection_layer']} | {r['seed']} | {cost} | {100 * r['final_avg_acc']:.1f} "
                  f"| {100 * r['task_id_acc']:.1f} | {100 * (r['oracle'] or 0):.1f} | {rules} |")  # fmt: skip
    return out


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    encoder = load_encoder(args)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
    machine += f"{torch.get_num_threads()} threads"
    print(f"# bench/routing.py on {machine}; batch {args.batch_size} at {args.image_size}px", flush=True)
    rows = inference_table(args, encoder)
    late_cols = " | ".join(f"1-pass L={L}" for L in args.selection_layers)
    print(f"\n| tasks T | plain forward (s) | two-pass bank | {late_cols} | layerwise 1-pass | every adapter |")
    print("| --- " * (5 + len(args.selection_layers)) + "|")
    for r in rows:
        naive = f"{r['every_adapter_x']:.2f}x" + ("" if r["every_adapter_measured"] else " (T, not timed)")
        late = " | ".join(f"{r['late_x'][L]:.2f}x" for L in args.selection_layers)
        head = f"| {r['tasks']} | {r['plain_s']:.2f} | {r['two_pass_x']:.2f}x"
        print(f"{head} | {late} | {r['one_pass_x']:.2f}x | {naive} |")
    accuracy = accuracy_vs_layer(args.runs, rows)
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
        record["accuracy_vs_layer"] = accuracy
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
