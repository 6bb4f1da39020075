# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""CLINC150 routers offline: cosine NMC, LDA (raw / L2-normalised, shrinkages), head x LDA.

python recipes/continual/experiments/clinc_lda.py ARGS (see the README, issue-12 section)
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from lntune.continual.router import ClassStatistics

d = torch.load(sys.argv[1], weights_only=False)
ytr, yte = d["train_labels"], d["test_labels"]
T = len(d["task_classes"])
C = sum(map(len, d["task_classes"]))
ct = torch.zeros(C, dtype=torch.long)
for t, cs in enumerate(d["task_classes"]):
    ct[cs] = t
tte = ct[yte]


def rep(name, g):
    p = g.argmax(1)
    acc = np.mean([float((p[tte == t] == yte[tte == t]).float().mean()) for t in range(T)])
    print(f"{name}: final {100 * acc:.1f} task-id {100 * float((ct[p] == tte).float().mean()):.1f}")


def lda(xtr, xte, a=None):
    s = ClassStatistics(C, xtr.shape[1], a)
    s.update(xtr, ytr)
    g, _ = s.scores(xte)
    return g.float(), s.last_shrinkage


means = torch.stack([d["train"][ytr == c].mean(0) for c in range(C)])
rep("nmc cosine", F.normalize(d["test"], dim=-1) @ F.normalize(means, dim=-1).T)
for norm in (False, True):
    xtr, xte = (F.normalize(d["train"], dim=-1), F.normalize(d["test"], dim=-1)) if norm else (d["train"], d["test"])
    for a in (None, 0.3, 0.5, 0.7, 0.9):
        g, used = lda(xtr, xte, a)
        rep(f"lda l2norm={norm} shrink={a} ({used:.3f})", g)
print("---- product of experts on CLINC (final step)")
own = torch.arange(C)
Hc = (torch.einsum("ntd,cd->ntc", d["test_adapted"], d["head_weight"].detach()) + d["head_bias"].detach())[:, ct, own]


def within(s):
    out = torch.empty_like(s)
    for t in range(T):
        out[:, ct == t] = s[:, ct == t].log_softmax(1)
    return out


for norm, a in ((False, None), (True, None), (True, 0.7)):
    xtr, xte = (F.normalize(d["train"], dim=-1), F.normalize(d["test"], dim=-1)) if norm else (d["train"], d["test"])
    g, _ = lda(xtr, xte, a)
    routed = ct.unsqueeze(0) == ct[g.argmax(1)].unsqueeze(1)
    oracle = ct.unsqueeze(0) == tte.unsqueeze(1)
    for w in (0.0, 0.1, 0.3, 1.0):
        s = w * within(g) + within(Hc)
        rep(f"norm={norm} a={a} route lda, H + {w} F", s.masked_fill(~routed, -1e30))
        rep("   oracle", s.masked_fill(~oracle, -1e30))
    rep(f"norm={norm} a={a} route lda, F only", within(g).masked_fill(~routed, -1e30))
# cosine NMC routing + head
cos = F.normalize(d["test"], dim=-1) @ F.normalize(means, dim=-1).T
routed = ct.unsqueeze(0) == ct[cos.argmax(1)].unsqueeze(1)
for w in (0.0, 10.0, 30.0):
    rep(f"route nmc, H + {w} cos", (within(Hc) + w * within(cos)).masked_fill(~routed, -1e30))
