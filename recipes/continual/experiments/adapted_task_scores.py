# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Issue 12: can the *adapted* model help pick the task? Per-task OOD scores on a finished two-pass bank (offline).

Task-id prediction by per-task out-of-distribution detection (Kim et al. 2022; Lin et al. 2024, TPL): for every task
``t`` keep Gaussian statistics of task ``t``'s training samples *under task t's own LN values* (class means + one
shared OAS-shrunk covariance, :class:`~lntune.continual.router.ClassStatistics`; no samples are kept), and score a test
sample ``x`` for task ``t`` by how in-distribution ``f_t(x)`` (its feature under task ``t``'s LN values) is. The raw
scores live in different feature spaces, so each is calibrated with task ``t``'s own training data only:

- ``maha-z`` (adapted): ``d_t(x) = min_c Mahalanobis^2_t(f_t(x), mu_c^t)``, standardised by the mean / std of
  ``d_t`` on task ``t``'s training samples held out from the statistics (2-fold cross-fitting inside the task), and
  negated (higher = more in-distribution);
- ``maha-logp`` (adapted): log of the Gaussian mixture density ``log sum_c N(f_t(x); mu_c^t, Sigma_t)`` (with its log
  determinant), no further calibration (the control: is calibration needed?);
- ``frozen-z``: ``maha-z`` on the frozen query with each task's own covariance (the control: does adaptation help,
  or just per-task statistics?);
- ``energy-z``: logsumexp of the inference head over task ``t``'s classes on ``f_t(x)``, standardised the same way;
- ``all-task-lda`` (NOT sample-free, an upper bound for a TPL-style likelihood ratio inside each adapted space): LDA
  over *all* classes in task ``t``'s adapted space, fitted on every task's training images under adapter ``t``
  (images of earlier tasks are gone when ``t`` is trained, so a continual learner cannot have it); the score is
  ``log p_t(task t | f_t(x))``.

Routing rules compared, all at the last step of the run (same LN values and heads): frozen LDA (the bank today: the
task of the class LDA predicts), the adapted score alone (argmax over candidate tasks), and ``log p_lda(t | x) + beta
* s_t(x)``, with ``p_lda(t | x)`` the frozen LDA posterior summed over the task's classes; candidates are all tasks or
the frozen router's top-2. ``beta`` is chosen on *training* data only: each class's training images are split in two
halves; every statistic (frozen LDA, per-task statistics and their calibration) is refitted on one half and scored on
the other, both ways, and the ``beta`` with the best held-out task-id accuracy is kept (ties: the smaller). The LN
values and heads did see those images in training, so the held-out in-distribution scores are somewhat optimistic.
Within the chosen task the class is predicted as the bank does (``lda+head``: head log-softmax x frozen-LDA posterior
renormalised within the task).

Features are computed once (frozen query and all ``T`` adapters for every train and test image, one routed pass per
batch) and cached in ``--cache``::

    python recipes/continual/experiments/adapted_task_scores.py --output_dir /tmp/runs/c10_s0_L11 --seed 0 \
        --cache /tmp/ats_s0.pt --json results/continual/adapted_task_scores.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run as recipe  # noqa: E402

from lntune.continual import as_encoder, latest_checkpoint, load_bank  # noqa: E402
from lntune.continual.router import ClassStatistics  # noqa: E402
from lntune.continual.stream import make_loader  # noqa: E402
from lntune.tuner import BASE_ADAPTER  # noqa: E402

BETAS = [0.0, 0.03, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0]
SCORES = ("maha-z", "maha-logp", "frozen-z", "energy-z", "all-task-lda")


# ---------------------------------------------------------------------------------------------- features
@torch.no_grad()
def all_features(bank, stream, which: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frozen query (n, dim), features under every task's adapter (n, T, dim)) of every `which` row: one routed
    pass per batch, each image repeated T + 1 times (base model, task_0 .. task_{T-1})."""
    rows = np.arange(len(stream.labels(which)))
    names_one = [BASE_ADAPTER] + [bank.adapter_name(t) for t in range(bank.num_tasks)]
    frozen, adapted = [], []
    for i, (_, inputs) in enumerate(make_loader(stream, which, rows, size, 0)):
        x = inputs["pixel_values"]
        f = bank.model(pixel_values=x.repeat_interleave(len(names_one), 0), adapter_names=names_one * len(x))
        f = f.float().view(len(x), len(names_one), -1)
        frozen.append(f[:, 0])
        adapted.append(f[:, 1:])
        print(f"{which} batch {i + 1}/{math.ceil(len(rows) / size)}", flush=True)
    return torch.cat(frozen), torch.cat(adapted)


def load_or_compute(args, own) -> dict:
    if own.cache and Path(own.cache).exists():
        return torch.load(own.cache, weights_only=False)
    base, info = recipe.load_backbone(args.model, args.modality)
    stream = recipe.load_stream(args, info)
    found = latest_checkpoint(Path(args.output_dir) / "checkpoints" / "ln-bank")
    if found is None or found[0] != stream.num_tasks - 1:
        raise ValueError(f"No final ln-bank checkpoint under {args.output_dir}/checkpoints (found {found}).")
    bank, _ = load_bank(found[1], copy.deepcopy(as_encoder(base).requires_grad_(False)))
    bank.eval()
    tic = time.perf_counter()
    d = {"train_labels": torch.from_numpy(stream.train_labels), "test_labels": torch.from_numpy(stream.test_labels)}
    d["train_frozen"], d["train_adapted"] = all_features(bank, stream, "train", own.batch_size)
    d["test_frozen"], d["test_adapted"] = all_features(bank, stream, "test", own.batch_size)
    d["feature_s"] = time.perf_counter() - tic
    d["head_weight"], d["head_bias"] = bank.classifier.weight.detach().float(), bank.classifier.bias.detach().float()
    d["task_classes"] = bank.task_classes
    # the bank's own router, to check that the refitted frozen LDA equals it
    d["bank_task_pred"] = bank.task_scores(d["test_frozen"]).argmax(-1).cpu()
    d["checkpoint"] = str(found[1])
    if own.cache:
        torch.save(d, own.cache)
    return d


# ---------------------------------------------------------------------------------------------- statistics
class Gauss:
    """Class means + shared OAS-shrunk covariance (ClassStatistics) of some classes, with squared Mahalanobis
    distances and the mixture log-density."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        s = ClassStatistics(num_classes, x.shape[1])
        s.update(x, y)
        cov, _ = s.shrunk_covariance()
        self.classes = s.classes
        self.mean = s.mean[self.classes]
        self.chol = torch.linalg.cholesky(cov)
        self.logdet = 2 * torch.log(torch.diagonal(self.chol)).sum()

    def maha(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) squared Mahalanobis distances to each class mean."""
        diff = x.double().unsqueeze(1) - self.mean.unsqueeze(0)  # (n, C, d)
        z = torch.linalg.solve_triangular(self.chol, diff.reshape(-1, diff.shape[-1]).T, upper=False)
        return (z**2).sum(0).view(x.shape[0], -1)

    def logp(self, x: torch.Tensor) -> torch.Tensor:
        d = self.mean.shape[1]
        m = self.maha(x)
        return (
            torch.logsumexp(-0.5 * m, 1) - math.log(m.shape[1]) - 0.5 * self.logdet - 0.5 * d * math.log(2 * math.pi)
        )


def two_folds(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A fold id (0/1) per row, half of each class in each fold."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.zeros(len(y), dtype=torch.long)
    for c in y.unique():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        fold[rows[len(rows) // 2 :]] = 1
    return fold


class Scorer:
    """Everything routing needs, fitted on training rows `fit` only: frozen LDA over all classes, and per task the
    adapted (and frozen) Gaussian statistics of its own samples with their calibration (mean / std of the score on
    held-out own samples, by 2-fold cross-fitting inside the task)."""

    def __init__(self, d: dict, fit: torch.Tensor, ct: torch.Tensor, seed: int) -> None:
        self.ct, self.T, self.C = ct, int(ct.max()) + 1, len(ct)
        self.W, self.b = d["head_weight"], d["head_bias"]
        y, tr_task = d["train_labels"], ct[d["train_labels"]]
        self.lda = ClassStatistics(self.C, d["train_frozen"].shape[1])
        self.lda.update(d["train_frozen"][fit], y[fit])
        self.gauss: dict[str, list[Gauss]] = {"adapted": [], "frozen": []}
        self.all_lda = []  # not sample-free: every task's images under each adapter (upper bound)
        self.calib: dict[str, list[tuple[float, float]]] = {s: [] for s in ("maha-z", "frozen-z", "energy-z")}
        for t in range(self.T):
            rows = fit[tr_task[fit] == t]
            xa, xf, yt = d["train_adapted"][rows, t], d["train_frozen"][rows], y[rows]
            self.gauss["adapted"].append(Gauss(xa, yt, self.C))
            self.gauss["frozen"].append(Gauss(xf, yt, self.C))
            lda_t = ClassStatistics(self.C, xa.shape[1])
            lda_t.update(d["train_adapted"][fit, t], y[fit])
            self.all_lda.append(lda_t)
            fold = two_folds(yt, seed + 17 * t)
            held = {name: [] for name in self.calib}
            for k in (0, 1):
                a, h = fold != k, fold == k
                held["maha-z"].append(Gauss(xa[a], yt[a], self.C).maha(xa[h]).min(1).values)
                held["frozen-z"].append(Gauss(xf[a], yt[a], self.C).maha(xf[h]).min(1).values)
            held["energy-z"].append(-self.energy(xa, t))  # the head saw every training image: no held-out part
            for name, v in held.items():
                v = torch.cat(v).double()
                self.calib[name].append((float(v.mean()), float(v.std())))

    def energy(self, f: torch.Tensor, t: int) -> torch.Tensor:
        logits = f.float() @ self.W.T + self.b
        return torch.logsumexp(logits[:, self.ct == t], 1).double()

    def frozen(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class log-posterior (n, C), task log-posterior (n, T), today's task: the task of the LDA argmax class)."""
        g, classes = self.lda.scores(q)
        assert torch.equal(classes, torch.arange(self.C))
        lp = g.log_softmax(1)
        task_lp = torch.stack([torch.logsumexp(lp[:, self.ct == t], 1) for t in range(self.T)], 1)
        return lp, task_lp, self.ct[g.argmax(1)]

    def task_score(self, name: str, q: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        """(n, T): score of each task, higher = more in-distribution (q frozen queries, fa (n, T, dim) adapted)."""
        cols = []
        for t in range(self.T):
            if name == "all-task-lda":
                lp = self.all_lda[t].scores(fa[:, t])[0].log_softmax(1)
                cols.append(torch.logsumexp(lp[:, self.ct == t], 1))
                continue
            if name == "maha-logp":
                cols.append(self.gauss["adapted"][t].logp(fa[:, t]))
                continue
            if name == "maha-z":
                raw = self.gauss["adapted"][t].maha(fa[:, t]).min(1).values
            elif name == "frozen-z":
                raw = self.gauss["frozen"][t].maha(q).min(1).values
            else:
                raw = -self.energy(fa[:, t], t)
            m, s = self.calib[name][t]
            cols.append(-(raw - m) / s)
        return torch.stack(cols, 1).double()


# ---------------------------------------------------------------------------------------------- evaluation
def choose(task_lp, score, beta, allowed) -> torch.Tensor:
    total = score if beta == math.inf else task_lp + beta * score  # beta = inf: the adapted score alone
    return total.masked_fill(~allowed, -math.inf).argmax(1)


def final_acc(pred_task, lp, fa, W, b, ct, y) -> tuple[float, float]:
    """(final average accuracy with `lda+head` within the chosen task, task-id accuracy)."""
    f = fa[torch.arange(len(y)), pred_task]
    head = (f.float() @ W.T + b).double()
    keep = ct.unsqueeze(0) == pred_task.unsqueeze(1)
    h = head.masked_fill(~keep, -math.inf).log_softmax(1)
    p = lp.masked_fill(~keep, -math.inf).log_softmax(1)
    pred = (h + p).argmax(1)
    tt = ct[y]
    acc = np.mean([float((pred[tt == t] == y[tt == t]).double().mean()) for t in range(int(ct.max()) + 1)])
    return 100 * float(acc), 100 * float((pred_task == tt).double().mean())


def topk_mask(task_scores: torch.Tensor, k: int) -> torch.Tensor:
    allowed = torch.zeros_like(task_scores, dtype=torch.bool)
    return allowed.scatter_(1, task_scores.topk(k, 1).indices, True)


def frozen_amax(scorer: Scorer, q: torch.Tensor) -> torch.Tensor:
    """The bank's task scores (best LDA discriminant among each task's classes): its top-k candidates."""
    return scorer.lda.task_scores(q, scorer.ct, scorer.T)


def analyse(d: dict, seed: int) -> dict:
    ct = torch.full((sum(len(c) for c in d["task_classes"]),), -1, dtype=torch.long)
    for t, cs in enumerate(d["task_classes"]):
        ct[cs] = t
    T, ytr, yte = int(ct.max()) + 1, d["train_labels"], d["test_labels"]
    W, b = d["head_weight"], d["head_bias"]
    out: dict = {"betas": BETAS}

    # ---- beta on training data: refit on one half of each class, score the other half, both ways
    fold = two_folds(ytr, 1000 + seed)
    held_tid: dict[str, dict[int, np.ndarray]] = {}
    n_held = 0
    for k in (0, 1):
        fit, held = torch.nonzero(fold != k).flatten(), torch.nonzero(fold == k).flatten()
        sc = Scorer(d, fit, ct, seed)
        q, fa, tt = d["train_frozen"][held], d["train_adapted"][held], ct[ytr[held]]
        _, task_lp, _ = sc.frozen(q)
        cand = frozen_amax(sc, q)
        for name in SCORES:
            s = sc.task_score(name, q, fa)
            for kk in (T, 2):
                allowed = topk_mask(cand, kk)
                key = f"{name}|k={kk}"
                hits = [int((choose(task_lp, s, beta, allowed) == tt).sum()) for beta in BETAS + [math.inf]]
                held_tid.setdefault(key, {})[k] = np.array(hits)
        n_held += len(held)
    chosen = {}
    for key, v in held_tid.items():
        acc = 100 * (v[0] + v[1]) / n_held
        i = int(np.argmax(acc[: len(BETAS)]))  # combined: best finite beta (ties: the smaller)
        chosen[key] = {"beta": BETAS[i], "heldout_task_id": float(acc[i]), "heldout_task_id_by_beta": acc.tolist()}
    out["beta_selection"] = chosen

    # ---- test: everything refitted on all training data
    tic = time.perf_counter()
    sc = Scorer(d, torch.arange(len(ytr)), ct, seed)
    q, fa = d["test_frozen"], d["test_adapted"]
    lp, task_lp, today = sc.frozen(q)
    out["router_matches_bank"] = bool(torch.equal(today, d["bank_task_pred"]))
    cand = frozen_amax(sc, q)
    rows = []

    def add(name, k, beta, pred_task, passes):
        acc, tid = final_acc(pred_task, lp, fa, W, b, ct, yte)
        rows.append({"routing": name, "k": k, "beta": beta, "final_avg_acc": acc, "task_id": tid, "passes": passes})

    add("frozen LDA (today)", 1, None, today, 2)
    add("frozen LDA task posterior (sum over classes)", T, 0.0, task_lp.argmax(1), 2)
    tt = ct[yte]
    add("oracle task", 1, None, tt, 2)
    test_by_beta = {}
    # how well each task score separates that task's test images from the others' (per task, then the mean)
    auroc = {"frozen LDA task posterior": [roc_auc_score((tt == t).numpy(), task_lp[:, t].numpy()) for t in range(T)]}
    for name in SCORES:
        s = sc.task_score(name, q, fa)
        auroc[name] = [roc_auc_score((tt == t).numpy(), s[:, t].numpy()) for t in range(T)]
        for kk in (T, 2):
            allowed = topk_mask(cand, kk)
            passes = 1 + kk if name != "frozen-z" else 2
            add(f"{name} alone", kk, math.inf, choose(task_lp, s, math.inf, allowed), passes)
            beta = chosen[f"{name}|k={kk}"]["beta"]
            add(f"LDA + beta * {name}", kk, beta, choose(task_lp, s, beta, allowed), passes)
            test_by_beta[f"{name}|k={kk}"] = [
                final_acc(choose(task_lp, s, bb, allowed), lp, fa, W, b, ct, yte) for bb in BETAS + [math.inf]
            ]
    out["scoring_s"] = time.perf_counter() - tic
    out["rows"] = rows
    out["auroc"] = auroc
    out["test_by_beta_not_for_selection"] = test_by_beta
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", help="Feature cache (.pt): computed if missing, read if present.")
    p.add_argument("--batch_size", type=int, default=25, help="Images per routed pass (x T + 1 rows).")
    p.add_argument("--json", help="Add this seed's results to this .json file (keyed by seed).")
    own, rest = p.parse_known_args(argv)
    args = recipe.parse_args(rest)
    torch.set_num_threads(1)
    d = load_or_compute(args, own)
    out = analyse(d, args.seed)
    out |= {
        "seed": args.seed,
        "output_dir": args.output_dir,
        "checkpoint": d["checkpoint"],
        "feature_s": round(d["feature_s"], 1),
        "n_train": len(d["train_labels"]),
        "n_test": len(d["test_labels"]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    print(f"router matches the bank's: {out['router_matches_bank']}; features {out['feature_s']} s")
    print("| routing | candidates k | beta | final avg acc | task-id acc | forward passes / sample |")
    for r in out["rows"]:
        print(
            f"| {r['routing']} | {r['k']} | {r['beta']} | {r['final_avg_acc']:.1f} | {r['task_id']:.1f} | {r['passes']} |"
        )
    for name, v in out["auroc"].items():
        print(f"AUROC {name}: " + " / ".join(f"{a:.3f}" for a in v) + f" (mean {np.mean(v):.3f})")
    for key, c in out["beta_selection"].items():
        print(key, "beta", c["beta"], "held-out task-id", round(c["heldout_task_id"], 1))
    if own.json:
        path = Path(own.json)
        allr = json.loads(path.read_text()) if path.exists() else {}
        allr[str(args.seed)] = out
        path.write_text(json.dumps(allr, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
