# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Shared by the Fisher tests: a tiny random BERT classifier, right-padded random token batches, and the comparison of
two sets of Fisher scores."""

from __future__ import annotations

import torch
import transformers
from torch import nn

from lntune.fisher import FisherScores


def assert_scores_close(got: FisherScores, ref: FisherScores, rel: float = 1e-4, floor: float = 1e-6) -> float:
    """Max relative error over entries above ``floor * max(ref)``; entries below it must agree in absolute terms."""
    assert list(got) == list(ref)
    top = max(float(t.max()) for p in ref.values() for t in p.values())
    assert top > 0
    worst = 0.0
    for name in ref:
        assert set(got[name]) == set(ref[name]), name
        for pname, r in ref[name].items():
            g = got[name][pname]
            assert g.dtype == torch.float32 and g.shape == r.shape
            big = r > floor * top
            if big.any():
                worst = max(worst, float(((g[big] - r[big]).abs() / r[big]).max()))
            small_err = float((g[~big] - r[~big]).abs().max()) if (~big).any() else 0.0
            assert small_err <= rel * floor * top, (name, pname)
    assert worst <= rel, worst
    print(f"max relative error {worst:.2e} over entries above {floor:g} * {top:.3g}")
    return worst


def token_batches(vocab: int, sizes: list[int], max_len: int, seed: int, labels: str = "seq", num_labels: int = 2):
    """Right-padded random token batches with varying lengths (every batch has padding)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size in sizes:
        lengths = torch.randint(2, max_len + 1, (size,), generator=gen)
        lengths[0] = max_len
        ids = torch.randint(3, vocab, (size, max_len), generator=gen)
        mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
        ids = ids * mask  # pad id 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels == "seq":
            batch["labels"] = torch.randint(0, num_labels, (size,), generator=gen)
        elif labels == "float":
            batch["labels"] = torch.randn(size, generator=gen)
        elif labels == "token":
            tok = torch.randint(0, num_labels, (size, max_len), generator=gen)
            tok[mask == 0] = -100
            tok[:, 1] = -100  # an ignored real token too
            batch["labels"] = tok
        batches.append(batch)
    return batches


def tiny_bert(num_labels: int = 2, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=num_labels,
        **kw,
    )
    return transformers.BertForSequenceClassification(cfg)
