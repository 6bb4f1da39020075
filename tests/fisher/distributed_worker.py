# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Worker for test_distributed.py: ``torchrun --nproc_per_node 2 distributed_worker.py OUT`` scores a tiny random
model with ``Accelerator(cpu=True)`` (gloo) and the main process saves the scores to ``OUT``; every rank saves how many
samples it ran forward to ``OUT.rank<r>``. ``build()`` is shared with the single-process side of the test."""

from __future__ import annotations

import os
import sys

import torch
import transformers

NUM_SAMPLES = 9  # of 11: the cap truncates a batch in the middle of the shard sequence


def build() -> tuple[torch.nn.Module, torch.utils.data.DataLoader]:
    """Tiny random BERT classifier and a right-padding DataLoader over 11 variable-length samples (batches of 2)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg)
    gen = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(11):
        length = int(torch.randint(2, 10, (1,), generator=gen))
        ids = torch.randint(3, 40, (length,), generator=gen)
        examples.append({"input_ids": ids, "label": int(torch.randint(0, 3, (1,), generator=gen))})

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, x in enumerate(items):
            ids[i, : len(x["input_ids"])] = x["input_ids"]
            mask[i, : len(x["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([x["label"] for x in items])}

    return model, torch.utils.data.DataLoader(examples, batch_size=2, shuffle=False, collate_fn=collate)


def main(out: str) -> None:
    from accelerate import Accelerator

    from lntune.fisher import fisher_scores

    accelerator = Accelerator(cpu=True)
    model, loader = build()
    model = accelerator.prepare(model)  # DDP-wrapped: fisher_scores unwraps it
    ran = []
    accelerator.unwrap_model(model).register_forward_pre_hook(
        lambda m, a, kw: ran.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    results = {}
    for kind in ("empirical", "true"):
        scores = fisher_scores(
            model, loader, num_samples=NUM_SAMPLES, kind=kind, accelerator=accelerator, progress=True, seed=5
        )
        results[kind] = {"num_samples": scores.num_samples, "scores": {n: dict(p) for n, p in scores.items()}}
    torch.save(sum(ran), f"{out}.rank{accelerator.process_index}")
    if accelerator.is_main_process:
        torch.save(results, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1])
