# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Dump, for a finished two-pass bank, every feature the routing/prediction experiments need (one-off analysis).

Writes ``features.pt`` to ``--dump``: frozen [CLS] after every block (train and test, one pass with hidden states),
the frozen query, test features under *every* task's adapter, train features under their own task's adapter.
Adapters are frozen once their task is trained, so these tensors give every step's numbers offline::

    python recipes/continual/experiments/dump_features.py --output_dir /tmp/runs/cifar10_lda --dump /tmp/feat.pt
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run as recipe  # noqa: E402

from lntune.continual import as_encoder, latest_checkpoint, load_bank  # noqa: E402
from lntune.continual.stream import make_loader  # noqa: E402


@torch.no_grad()
def frozen_pass(bank, stream, which: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-block [CLS] (n, blocks + 1, dim) before the final norm, final query (n, dim)) of every row."""
    rows = torch.arange(len(stream.labels(which))).numpy()
    hidden, queries = [], []
    vit = bank.encoder.model.base_model
    for _, inputs in make_loader(stream, which, rows, size, 0):
        with bank.model.disable_adapter():
            out = vit(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        hidden.append(torch.stack([h[:, 0] for h in out.hidden_states], 1))
        queries.append(out.last_hidden_state[:, 0])
    return torch.cat(hidden), torch.cat(queries)


@torch.no_grad()
def adapted_pass(bank, stream, which: str, size: int, tasks: list[int]) -> torch.Tensor:
    """(n, len(tasks), dim): every row's features under each adapter in `tasks` (one routed pass per batch)."""
    rows = torch.arange(len(stream.labels(which))).numpy()
    out = []
    for _, inputs in make_loader(stream, which, rows, size, 0):
        x = inputs["pixel_values"]
        names = [bank.adapter_name(t) for _ in range(len(x)) for t in tasks]
        f = bank.model(pixel_values=x.repeat_interleave(len(tasks), 0), adapter_names=names)
        out.append(f.view(len(x), len(tasks), -1))
    return torch.cat(out)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dump", required=True)
    own, rest = p.parse_known_args(argv)
    args = recipe.parse_args(rest)
    base, info = recipe.load_backbone(args.model, args.modality)
    stream = recipe.load_stream(args, info)
    found = latest_checkpoint(Path(args.output_dir) / "checkpoints" / "ln-bank")
    bank, _ = load_bank(found[1], copy.deepcopy(as_encoder(base).requires_grad_(False)))
    bank.eval()
    size = 50
    out = {"train_labels": torch.from_numpy(stream.train_labels), "test_labels": torch.from_numpy(stream.test_labels)}
    out["train_hidden"], out["train_query"] = frozen_pass(bank, stream, "train", size)
    out["test_hidden"], out["test_query"] = frozen_pass(bank, stream, "test", size)
    print("frozen done", flush=True)
    out["test_adapted"] = adapted_pass(bank, stream, "test", size, list(range(bank.num_tasks)))
    print("test adapted done", flush=True)
    own_task = torch.from_numpy(stream.task_of("train"))
    train_all = adapted_pass(bank, stream, "train", size, list(range(bank.num_tasks)))
    out["train_adapted"] = train_all  # every adapter (offline analysis may only use adapters 0..own task)
    out["train_own"] = train_all[torch.arange(len(own_task)), own_task]
    out["head_weight"], out["head_bias"] = bank.classifier.weight.detach(), bank.classifier.bias.detach()
    out["task_classes"] = bank.task_classes
    torch.save(out, own.dump)
    print("saved", own.dump, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
