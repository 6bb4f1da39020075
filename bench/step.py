# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""One training step on MiniLM: lntune vs full fine-tuning vs peft LNTuningConfig vs peft LoRA (r=8).

    python bench/step.py [--batch_size 32] [--seq_len 128] [--steps 8] [--rounds 2]

Each method runs in its own subprocess (so peak memory is that method's alone), in round-robin order over
`--rounds` rounds to spread machine noise across methods; the table reports the median step time and the peak
memory of each method as ratios to full fine-tuning measured in the same run. Peak memory is the GPU's
`max_memory_allocated` on CUDA, and on CPU the growth of the process's peak resident set from after the model is
built to the end of training (`ru_maxrss`). The adapter file size is compared with the base model's safetensors file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("full", "ln-floor", "lntune", "peft-ln", "lora")


def build(method: str):
    import transformers as tf
    from peft import get_peft_model

    import lntune
    from lntune import comparisons
    from lntune.assets import minilm_dir

    model = tf.AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    builders = {
        "full": comparisons.full,
        "ln-floor": comparisons.ln_floor,
        "lntune": lambda m: get_peft_model(m, lntune.LNTuneConfig(task_type="SEQ_CLS")),
        "peft-ln": comparisons.peft_ln,
        "lora": comparisons.lora,
    }
    if method in builders:
        return builders[method](model)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(method: str, batch_size: int, seq_len: int, steps: int) -> dict:
    """Time `steps` optimizer steps (after 2 warm-up steps) of `method`; measure its peak memory."""
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(method).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(1000, 29000, (batch_size, seq_len), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] % 2)}

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    adapter_kb = None
    if method not in ("full", "ln-floor"):
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            adapter_kb = (Path(tmp) / "adapter_model.safetensors").stat().st_size / 1024
    return {
        "method": method,
        "step_s": statistics.median(times),
        "peak_mb": peak_mb,
        "trainable": sum(p.numel() for p in params),
        "adapter_kb": adapter_kb,
        "device": device,
    }


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per method per round.")
    parser.add_argument("--rounds", type=int, default=2, help="Round-robin rounds over the methods.")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # internal: run a single method
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print(json.dumps(run_one(args.one, args.batch_size, args.seq_len, args.steps)))
        return

    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for method in METHODS:
            cmd = [sys.executable, __file__, "--one", method, "--batch_size", str(args.batch_size)]
            cmd += ["--seq_len", str(args.seq_len), "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[method].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {method:8s} {results[method][-1]['step_s']:.3f} s/step", flush=True)

    from lntune.assets import minilm_dir

    base_kb = (minilm_dir() / "model.safetensors").stat().st_size / 1024
    full_t = statistics.median(x["step_s"] for x in results["full"])
    full_m = statistics.median(x["peak_mb"] for x in results["full"])
    print(f"\nMiniLM (22.7M params), batch {args.batch_size} x seq {args.seq_len}, one AdamW step; {machine()}")
    print(f"median of {args.steps} steps x {args.rounds} rounds; ratios are to full fine-tuning in this run\n")
    print(
        "| method | trainable params | step time | time vs full FT | peak memory | memory vs full FT | adapter file |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in METHODS:
        t = statistics.median(x["step_s"] for x in results[method])
        m = statistics.median(x["peak_mb"] for x in results[method])
        kb = results[method][0]["adapter_kb"]
        file_cell = "-" if kb is None else f"{kb:.1f} KB ({100 * kb / base_kb:.3f}% of base)"
        print(
            f"| {method} | {results[method][0]['trainable']:,} | {t:.3f} s | {t / full_t:.2f}x | {m:.0f} MB | "
            f"{m / full_m:.2f}x | {file_cell} |"
        )
    ln, peft_ln = (statistics.median(x["step_s"] for x in results[k]) for k in ("lntune", "peft-ln"))
    print(
        f"\nlntune / full FT step time: {ln / full_t:.2f}x (target <= 0.65x); lntune / peft LNTuning: {ln / peft_ln:.2f}x"
    )


if __name__ == "__main__":
    main()
