# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Offline routing/prediction experiments on the tensors ``dump_features.py`` wrote (final step, no training).

Prints final average accuracy / task-id accuracy (percent) of:

- LDA on the frozen [CLS] after each block (the one-pass bank's router at selection point L);
- within-task class rules after top-1 LDA routing and with oracle routing: ``F`` frozen LDA, ``H`` the rectified
  head, ``A`` LDA on *adapted* features (class statistics of each task's training samples under its own LN values),
  and sums of their within-task log-posteriors (products of experts);
- joint (task, class) scoring: adapted-LDA discriminants over every task's adapter, and top-k tasks of the frozen LDA
  scored by ``log p_lda(c | x) + tau * log p_head(c | task)``::

    python recipes/continual/experiments/analyse_features.py /tmp/feat.pt
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from lntune.continual.router import ClassStatistics


def main(path: str) -> None:
    d = torch.load(path, weights_only=False)
    ytr, yte = d["train_labels"], d["test_labels"]
    num_tasks, num_classes = len(d["task_classes"]), sum(len(c) for c in d["task_classes"])
    ct = torch.zeros(num_classes, dtype=torch.long)
    for t, cs in enumerate(d["task_classes"]):
        ct[cs] = t
    tte = ct[yte]

    def lda(xtr: torch.Tensor, xte: torch.Tensor) -> torch.Tensor:
        s = ClassStatistics(num_classes, xtr.shape[1])
        s.update(xtr, ytr)
        return s.scores(xte)[0].float()

    def report(name: str, scores: torch.Tensor) -> None:
        p = scores.argmax(1)
        acc = np.mean([float((p[tte == t] == yte[tte == t]).float().mean()) for t in range(num_tasks)])
        print(f"{name}: final {100 * acc:.1f}, task-id {100 * float((ct[p] == tte).float().mean()):.1f}")

    def within(s: torch.Tensor) -> torch.Tensor:  # log-softmax within each task's classes
        out = torch.empty_like(s)
        for t in range(num_tasks):
            out[:, ct == t] = s[:, ct == t].log_softmax(1)
        return out

    hidden_tr, hidden_te = d["train_hidden"], d["test_hidden"]
    for L in range(1, hidden_tr.shape[1]):
        report(f"frozen LDA at the input of block {L}", lda(hidden_tr[:, L], hidden_te[:, L]))
    g_f = lda(d["train_query"], d["test_query"])
    report("frozen LDA on the final query (the lda baseline)", g_f)
    s = ClassStatistics(num_classes, d["train_own"].shape[1])
    s.update(d["train_own"], ytr)
    g_a = torch.stack([s.scores(d["test_adapted"][:, t])[0].float() for t in range(num_tasks)], 1)
    own = torch.arange(num_classes)
    a_c = g_a[:, ct, own]  # adapted LDA of class c under its own task's adapter
    logits = torch.einsum("ntd,cd->ntc", d["test_adapted"], d["head_weight"]) + d["head_bias"]
    h_c = logits[:, ct, own]
    routed = ct.unsqueeze(0) == ct[g_f.argmax(1)].unsqueeze(1)
    oracle = ct.unsqueeze(0) == tte.unsqueeze(1)
    f, h, a = within(g_f), within(h_c), within(a_c)
    for name, sc in (("F", f), ("H", h), ("A", a), ("F+H", f + h), ("F+A", f + a), ("F+A+H", f + a + h)):
        report(f"top-1 LDA route, within-task {name}", sc.masked_fill(~routed, -1e30))
        report(f"oracle route, within-task {name}", sc.masked_fill(~oracle, -1e30))
    report("joint adapted LDA over every adapter", a_c)
    log_p = g_f.log_softmax(1)
    task_lp = torch.stack([torch.logsumexp(log_p[:, ct == t], 1) for t in range(num_tasks)], 1)
    for k in (1, 2, 3):
        allowed = torch.zeros(len(yte), num_tasks, dtype=torch.bool)
        allowed.scatter_(1, task_lp.topk(k, 1).indices, True)
        for tau in (1.0, 2.0, 4.0):
            report(
                f"top-{k} tasks, log p_lda(c) + {tau} log p_head(c|t)",
                (log_p + tau * h).masked_fill(~allowed[:, ct], -1e30),
            )


if __name__ == "__main__":
    main(sys.argv[1])
