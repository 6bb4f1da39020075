# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Benchmark: diagonal Fisher of every LayerNorm scalar of MiniLM on real SST-2 sentences, three ways, in one run.

(a) ``fisher_scores_reference``: one sample at a time, plain autograd (batch size 1, no padding);
(b) ``fisher_scores``: exact per-sample gradients in one batched forward/backward per batch;
(c) the floor: the same batches through a plain forward + backward to the norm parameters (eval mode, only the norm
    parameters requiring grad, the same summed log-likelihood), with no per-sample work at all.

Batches are sorted by length (to cut padding) for (b) and (c) alike. Prints the times, the speed-ups (a)/(b) and
(b)/(c) (target: (b) <= 1.15x (c)) and the max relative difference between (a) and (b).

    .venv/bin/python bench/fisher.py [--num_samples 512] [--batch_size 32] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from lntune.assets import minilm_dir  # noqa: E402
from lntune.fisher import fisher_scores, fisher_scores_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "fisher"))
from score_minilm import DEFAULT_SST2, read_sst2, text_batches  # noqa: E402

from lntune.norms import find_norms  # noqa: E402


def floor_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
    """(c): forward + backward to the norm parameters only, batch by batch, no per-sample work."""
    params = [p for info in find_norms(model) for p in (info.module.weight, info.module.bias) if p is not None]
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
            torch.autograd.grad(loss, params)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def max_rel_diff(a, b, floor: float = 1e-6) -> tuple[float, float]:
    """Max relative difference over entries above ``floor * max``, and the max absolute difference elsewhere."""
    top = max(float(t.max()) for p in a.values() for t in p.values())
    rel = small = 0.0
    for name in a:
        for pname, ta in a[name].items():
            tb = b[name][pname]
            big = ta > floor * top
            if big.any():
                rel = max(rel, float(((tb[big] - ta[big]).abs() / ta[big]).max()))
            if (~big).any():
                small = max(small, float((tb[~big] - ta[~big]).abs().max()))
    return rel, small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_SST2))
    parser.add_argument("--num_samples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of (b) and (c), interleaved")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model_dir = minilm_dir()
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    sentences, labels = read_sst2(Path(args.data), args.num_samples)
    batches = text_batches(tokenizer, sentences, labels, args.batch_size, sort_by_length=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    print(
        f"MiniLM-L6 ({len(find_norms(model))} LayerNorms), {len(sentences)} SST-2 train sentences, "
        f"{len(batches)} batches of <= {args.batch_size} sorted by length, {tokens} tokens "
        f"({100 * (padded - tokens) / padded:.1f}% padding), torch {torch.__version__}, {args.threads} threads"
    )

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")

    # Warm-up (allocator, kernels) on two batches each.
    fisher_scores(model, batches[:2], num_samples=None, progress=False)
    floor_pass(model, batches[:2])

    t_ref, c_ref, ref = timed(fisher_scores_reference, model, batches)

    # (b) and (c) alternate, so a busy spell on a shared machine hits both alike; the ratio is taken per round.
    rounds = []
    for _ in range(args.repeats):
        wall_b, cpu_b, got = timed(fisher_scores, model, batches, num_samples=None, progress=False)
        wall_c, cpu_c, _ = timed(floor_pass, model, batches)
        rounds.append((wall_b, cpu_b, wall_c, cpu_c))
    med = [statistics.median(r[i] for r in rounds) for i in range(4)]
    ratio_wall = statistics.median(r[0] / r[2] for r in rounds)
    ratio_cpu = statistics.median(r[1] / r[3] for r in rounds)
    rel, small = max_rel_diff(ref, got)
    print(f"(a) reference, batch size 1 loop    : {t_ref:8.2f} s wall {c_ref:8.2f} s CPU")
    print(
        f"(b) lntune batched per-sample Fisher: {med[0]:8.2f} s wall {med[1]:8.2f} s CPU  (median of {args.repeats})"
    )
    print(
        f"(c) floor: plain batched fwd+bwd    : {med[2]:8.2f} s wall {med[3]:8.2f} s CPU  (median of {args.repeats})"
    )
    print("rounds (b)/(c) wall: " + " ".join(f"{r[0] / r[2]:.3f}" for r in rounds))
    print(f"speed-up (a)/(b): {t_ref / med[0]:6.1f}x wall, {c_ref / med[1]:.1f}x CPU")
    print(f"overhead (b)/(c): {ratio_wall:6.3f}x wall, {ratio_cpu:.3f}x CPU (median per-round ratio; target <= 1.15x)")
    print(f"max relative difference (a) vs (b): {rel:.2e} (entries above 1e-6 x max; max abs diff below: {small:.1e})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"samples: (a) {ref.num_samples}, (b) {got.num_samples}")


if __name__ == "__main__":
    main()
