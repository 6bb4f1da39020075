# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Issue 12 probe: which sample-free classifier on *frozen* features routes (and classifies) best?

Extracts frozen features once per (config, seed) with the recipe's own data, split, preprocessing and backbone
(``run.parse_args`` / ``load_backbone`` / ``load_stream``: same seeds, class orders and subsamples as
``recipes/continual/run.py``), caches them under ``results/tmp/router_probe/`` (gitignored), then evaluates every
(feature set, classifier) pair class-incrementally: statistics updated task by task, evaluated after each task on the
test samples of all seen tasks. Reports final average accuracy (mean over tasks, the recipe's headline protocol), the
final task-id accuracy (task of the predicted class), and the average incremental accuracy.

Classifiers (all stream task by task; none keeps a sample of an earlier task):

- ``nmc``: cosine nearest class mean (the recipe's ``nmc``).
- ``lda``: shrunk shared-covariance LDA, OAS (``ClassStatistics``, the recipe's ``lda`` and the bank's router).
- ``lda-l2``: the same on L2-normalised features.
- ``rda-<a>``: regularised discriminant analysis: class ``c``'s covariance is ``(1 - a) S + a S_c`` (``S`` the pooled,
  ``S_c`` the class's own), shrunk toward its mean variance with the pooled OAS coefficient; Gaussian log-likelihood
  with the log-determinant (per-class scatter matrices are stored: ``C d^2`` numbers).
- ``fecam``: FeCAM (Goswami et al. 2023): L2-normalised features, per-class covariance shrunk with FeCAM's
  ``shrink_cov`` (gamma1 = gamma2 = 1), normalised to a correlation matrix, Mahalanobis distance, no log-determinant.
- ``ridge``: ridge regression to one-hot targets from the streamed Gram matrix ``G = sum x x'`` and ``C = sum x y'``.
- ``ranpac-<M>``: RanPAC (McDonnell et al. 2023) without its first-session adaptation: ``h = ReLU(x W)``, ``W`` a
  fixed seeded ``N(0, 1)`` matrix of ``d x M``, then the ridge above on ``h``.

Ridge lambda (``ridge``, ``ranpac``), per task, from the training data only: the current task's training samples are
split 80 / 20 per class (seeded); the ridge is fitted on the statistics of the earlier tasks plus the 80% and each
lambda in ``10^-8 .. 10^8`` (RanPAC's grid) is scored on the held-out 20% by the mean squared error to the one-hot
targets over all seen classes (RanPAC's criterion; RanPAC fits on the first 80% of the current task only); the chosen
lambda is then used with all the statistics (earlier tasks + the whole current task).

Feature sets (see :func:`feature_sets`): ViT: ``cls`` (the recipe's query: final [CLS] after the final norm),
``cls+patch`` (with the mean of the final patch tokens), ``cls@a-12`` (the [CLS] entering blocks a..11, then the
final one: the last 13 - a layers), ``cls+patch@10-12`` (both, last three layers); MiniLM: ``mean`` (the recipe's
query: masked mean of the last layer), ``mean+cls``, ``mean+pooler`` (BERT's pooler output), ``mean@a-6`` (masked
means of layers a..6, concatenated), ``avg-mean@1-6`` (their average over layers 1..6, same size as the query).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python recipes/continual/experiments/router_probe.py \\
        --configs cifar10_vit_tiny_5tasks clinc150_minilm_10tasks --seeds 0 1 2 --out results/continual/router_probe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run as recipe  # noqa: E402

from lntune.continual import as_encoder  # noqa: E402
from lntune.continual.metrics import accuracy_matrix_from_predictions, summarize, task_id_accuracy  # noqa: E402
from lntune.continual.router import ClassStatistics, oas_shrinkage  # noqa: E402
from lntune.continual.stream import make_loader  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / "results" / "tmp" / "router_probe"
RIDGES = 10.0 ** np.arange(-8, 9)


# ---------------------------------------------------------------------------------------------------------- features
@torch.no_grad()
def extract(config: str, seed: int, batch_size: int = 50, max_train_per_class: int | None = None) -> dict[str, Any]:
    """Frozen features of every train/test row of the recipe's stream for (config, seed), cached as .pt.

    ``max_train_per_class`` overrides the config's (the recipe's ``--max_train_per_class``; the test subsample does
    not depend on it); None keeps the config's value and the original cache name."""
    budget = "" if max_train_per_class is None else f"_n{max_train_per_class}"
    path = CACHE / f"{config}_s{seed}{budget}.pt"
    if path.is_file():
        return torch.load(path)
    argv = ["--config", config, "--seed", str(seed)]
    if max_train_per_class is not None:
        argv += ["--max_train_per_class", str(max_train_per_class)]
    args = recipe.parse_args(argv)
    base, info = recipe.load_backbone(args.model, args.modality)
    encoder = as_encoder(base, pooling=args.pooling).requires_grad_(False).eval()
    stream = recipe.load_stream(args, info)
    core = encoder.model.base_model
    out: dict[str, Any] = {
        "modality": args.modality,
        "model": args.model,
        "class_order": list(stream.split.class_order),
    }
    for which in ("train", "test"):
        rows = np.arange(len(stream.labels(which)))
        parts: dict[str, list[torch.Tensor]] = {}
        tic = time.perf_counter()
        for _, inputs in make_loader(stream, which, rows, batch_size, 0):
            query = encoder(**inputs).float()  # exactly the recipe's query (QueryCache -> bank.query)
            if args.modality == "image":
                res = core(pixel_values=inputs["pixel_values"], output_hidden_states=True)
                hs = torch.stack(res.hidden_states, 1)  # (n, blocks + 1, tokens, d), before the final norm
                feats = {
                    "query": query,
                    "cls_layers": hs[:, :, 0],
                    "patch_layers": hs[:, :, 1:].mean(2),
                    "final_patch": res.last_hidden_state[:, 1:].mean(1),
                }
                assert torch.allclose(res.last_hidden_state[:, 0], query, atol=1e-5)
            else:
                kw = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                res = core(**kw, output_hidden_states=True)
                hs = torch.stack(res.hidden_states, 1)  # (n, layers + 1, tokens, d)
                m = inputs["attention_mask"].to(hs.dtype)[:, None, :, None]
                feats = {
                    "query": query,
                    "cls_layers": hs[:, :, 0],
                    "mean_layers": (hs * m).sum(2) / m.sum(2).clamp_min(1.0),
                    "pooler": res.pooler_output if res.pooler_output is not None else torch.zeros_like(query),
                }
                assert torch.allclose(feats["mean_layers"][:, -1], query, atol=1e-5)
            for k, v in feats.items():
                # clone: a slice such as hs[:, :, 0] would keep the batch's whole hidden-state tensor alive (about
                # 2 MB per ViT-Ti image: CIFAR-10 at 1,000 images per class ran out of 24 GB without it)
                parts.setdefault(k, []).append(v.float().clone())
        out[which] = {k: torch.cat(v) for k, v in parts.items()}
        out[f"{which}_labels"] = torch.from_numpy(stream.labels(which))
        out[f"{which}_tasks"] = torch.from_numpy(stream.task_of(which))
        print(
            f"[extract] {config} seed {seed} {which}: {len(rows)} rows in {time.perf_counter() - tic:.0f}s", flush=True
        )
    out["task_classes"] = [stream.task_classes(t) for t in range(stream.num_tasks)]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def feature_sets(data: dict[str, Any]) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    """Name -> function of a split's feature dict giving one `(n, D)` float tensor."""
    if data["modality"] == "image":
        return {
            "cls": lambda f: f["query"],
            "cls+patch": lambda f: torch.cat([f["query"], f["final_patch"]], 1),
            "cls@11-12": lambda f: torch.cat([f["cls_layers"][:, 11], f["query"]], 1),
            "cls@10-12": lambda f: torch.cat([f["cls_layers"][:, 10], f["cls_layers"][:, 11], f["query"]], 1),
            "cls@8-12": lambda f: torch.cat([f["cls_layers"][:, 8:12].flatten(1), f["query"]], 1),
            "cls+patch@10-12": lambda f: torch.cat(
                [
                    f["cls_layers"][:, 10],
                    f["cls_layers"][:, 11],
                    f["query"],
                    f["patch_layers"][:, 11],
                    f["final_patch"],
                ],
                1,
            ),
        }
    return {
        "mean": lambda f: f["query"],
        "mean+cls": lambda f: torch.cat([f["query"], f["cls_layers"][:, -1]], 1),
        "mean+pooler": lambda f: torch.cat([f["query"], f["pooler"]], 1),
        "mean@5-6": lambda f: torch.cat([f["mean_layers"][:, 5], f["query"]], 1),
        "mean@4-6": lambda f: torch.cat([f["mean_layers"][:, 4], f["mean_layers"][:, 5], f["query"]], 1),
        "mean@2-6": lambda f: torch.cat([f["mean_layers"][:, 2:6].flatten(1), f["query"]], 1),
        "avg-mean@1-6": lambda f: f["mean_layers"][:, 1:].mean(1),
    }


# ---------------------------------------------------------------------------------------------------------- classifiers
class NMC:
    """Cosine nearest class mean (the recipe's `nmc`)."""

    def __init__(self, num_classes: int, dim: int, seed: int) -> None:
        self.means: dict[int, torch.Tensor] = {}

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = F.normalize(x, dim=-1)
        for c in y.unique().tolist():
            self.means[c] = F.normalize(x[y == c].mean(0), dim=-1)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(self.means)
        return F.normalize(x, dim=-1) @ torch.stack([self.means[c] for c in classes]).T, torch.tensor(classes)


class LDA:
    """`ClassStatistics` (OAS-shrunk shared-covariance LDA), optionally on L2-normalised features."""

    def __init__(self, num_classes: int, dim: int, seed: int, l2: bool = False) -> None:
        self.stats, self.l2 = ClassStatistics(num_classes, dim), l2

    def _x(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2 else x

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.stats.update(self._x(x), y)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stats.scores(self._x(x))


class PerClassGaussian:
    """Per-class means and scatter matrices (each class arrives in one task, so they are exact and sample-free).

    `mode="rda"`: covariance `(1 - a) S_pooled + a S_c`, shrunk toward its mean variance with the pooled OAS
    coefficient, Gaussian log-likelihood (with log-determinant). `mode="fecam"`: FeCAM on L2-normalised features:
    `S_c` shrunk with FeCAM's `shrink_cov` (gamma1 = gamma2 = 1), normalised to a correlation matrix, minus the
    Mahalanobis distance."""

    def __init__(self, num_classes: int, dim: int, seed: int, mode: str = "rda", a: float = 0.5) -> None:
        self.mode, self.a, self.dim = mode, a, dim
        self.count: dict[int, int] = {}
        self.mean: dict[int, torch.Tensor] = {}
        self.scatter: dict[int, torch.Tensor] = {}

    def _x(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.mode == "fecam" else x

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = self._x(x)
        for c in y.unique().tolist():
            xc = x[y == c]
            self.count[c], self.mean[c] = len(xc), xc.mean(0)
            centred = xc - self.mean[c]
            self.scatter[c] = centred.T @ centred

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._x(x)
        classes = sorted(self.count)
        n = sum(self.count.values())
        d = self.dim
        eye = torch.eye(d, dtype=x.dtype)
        pooled = sum(self.scatter.values()) / max(n - len(classes), 1)
        gamma = oas_shrinkage(pooled, n)
        out = []
        for c in classes:
            own = self.scatter[c] / max(self.count[c] - 1, 1)
            if self.mode == "rda":
                cov = (1 - self.a) * pooled + self.a * own
                cov = (1 - gamma) * cov + gamma * (torch.trace(cov) / d) * eye
            else:
                off = own - torch.diag(torch.diagonal(own))
                off_mean = off.sum() / max(int((off != 0).sum()), 1)
                cov = own + torch.diagonal(own).mean() * eye + off_mean * (1 - eye)
                sd = torch.sqrt(torch.diagonal(cov))
                cov = cov / torch.outer(sd, sd)
            chol = torch.linalg.cholesky(cov)
            z = torch.linalg.solve_triangular(chol, (x - self.mean[c]).T, upper=False)
            maha = (z**2).sum(0)
            logdet = 2 * torch.log(torch.diagonal(chol)).sum() if self.mode == "rda" else 0.0
            out.append(-0.5 * maha - 0.5 * logdet)
        return torch.stack(out, 1), torch.tensor(classes)


class Ridge:
    """Streamed ridge regression to one-hot targets on `phi(x)` (identity, or RanPAC's `ReLU(x W)` with `M` columns);
    lambda chosen per task on a held-out 20% of the current task (see the module docstring)."""

    def __init__(self, num_classes: int, dim: int, seed: int, project: int = 0) -> None:
        self.num_classes = num_classes
        g = torch.Generator().manual_seed(10_000 + seed)
        self.W = torch.randn(dim, project, generator=g, dtype=torch.float64) if project else None
        m = project or dim
        self.G = torch.zeros(m, m, dtype=torch.float64)
        self.C = torch.zeros(m, num_classes, dtype=torch.float64)
        self.seen: list[int] = []
        self.lambdas: list[float] = []
        self.seed = seed
        self.weights: torch.Tensor | None = None

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.W is None else torch.relu(x @ self.W)

    def _onehot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        h = self.phi(x)
        seen = sorted(set(self.seen) | set(y.tolist()))
        # stratified 80/20 split of the current task (seeded)
        g = torch.Generator().manual_seed(20_000 + self.seed + len(self.seen))
        val = torch.zeros(len(y), dtype=torch.bool)
        for c in y.unique().tolist():
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            val[idx[: max(1, len(idx) // 5)]] = True
        fit = ~val
        G_fit = self.G + h[fit].T @ h[fit]
        C_fit = self.C + h[fit].T @ self._onehot(y[fit])
        e, V = torch.linalg.eigh(G_fit)
        P, B = h[val] @ V, (V.T @ C_fit)[:, seen]
        target = self._onehot(y[val])[:, seen]
        losses = [float((((P / (e + lam)) @ B - target) ** 2).mean()) for lam in RIDGES]
        lam = float(RIDGES[int(np.argmin(losses))])
        self.G += h.T @ h
        self.C += h.T @ self._onehot(y)
        self.seen = seen
        self.lambdas.append(lam)
        eye = torch.eye(self.G.shape[0], dtype=torch.float64)
        self.weights = torch.cholesky_solve(self.C[:, seen], torch.linalg.cholesky(self.G + lam * eye))

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.phi(x) @ self.weights, torch.tensor(self.seen)


def classifiers(max_pc_dim: int) -> dict[str, Callable[..., Any]]:
    """Name -> factory `(num_classes, dim, seed)`; per-class-covariance ones only for dims <= `max_pc_dim`."""
    return {
        "nmc": NMC,
        "lda": LDA,
        "lda-l2": lambda n, d, s: LDA(n, d, s, l2=True),
        "rda-0.2": lambda n, d, s: PerClassGaussian(n, d, s, "rda", 0.2) if d <= max_pc_dim else None,
        "rda-0.5": lambda n, d, s: PerClassGaussian(n, d, s, "rda", 0.5) if d <= max_pc_dim else None,
        "fecam": lambda n, d, s: PerClassGaussian(n, d, s, "fecam") if d <= max_pc_dim else None,
        "ridge": Ridge,
        "ranpac-2k": lambda n, d, s: Ridge(n, d, s, project=2048),
        "ranpac-5k": lambda n, d, s: Ridge(n, d, s, project=5000),
    }


# ---------------------------------------------------------------------------------------------------------- evaluation
def run_one(
    data: dict[str, Any], feats: Callable, factory: Callable, seed: int, oracle_task: bool = False
) -> dict[str, Any] | None:
    """Class-incremental evaluation of one classifier on one feature set; None if the factory declines.

    ``oracle_task``: also report ``final_avg_acc_oracle_task``: after the last task, each test sample's prediction is
    the argmax of the classifier's scores restricted to the classes of its TRUE task (oracle routing), averaged per
    task and then over tasks (the same task mean as ``final_avg_acc``)."""
    xtr = feats(data["train"]).to(torch.float64)
    xte = feats(data["test"]).to(torch.float64)
    ytr, yte = data["train_labels"].long(), data["test_labels"].long()
    ttr, tte = data["train_tasks"].numpy(), data["test_tasks"].numpy()
    num_classes = sum(len(c) for c in data["task_classes"])
    clf = factory(num_classes, xtr.shape[1], seed)
    if clf is None:
        return None
    task_of_class = np.concatenate([[t] * len(c) for t, c in enumerate(data["task_classes"])])
    preds, labels, tasks, tid = [], [], [], []
    tic = time.perf_counter()
    for t in range(len(data["task_classes"])):
        rows = torch.from_numpy(np.flatnonzero(ttr == t))
        clf.update(xtr[rows], ytr[rows])
        test_rows = np.flatnonzero(tte <= t)
        scores, classes = clf.scores(xte[torch.from_numpy(test_rows)])
        pred = classes[scores.argmax(-1)].numpy()
        preds.append(pred)
        labels.append(yte.numpy()[test_rows])
        tasks.append(tte[test_rows])
        tid.append(task_id_accuracy(task_of_class[pred], tte[test_rows]))
    acc, n_test = accuracy_matrix_from_predictions(preds, labels, tasks)
    s = summarize(acc, n_test, tid)
    out = {k: s[k] for k in ("final_avg_acc", "final_avg_acc_sample", "avg_inc_acc", "forgetting")}
    out.update(
        task_id=tid[-1], task_id_per_step=tid, dim=int(xtr.shape[1]), seconds=round(time.perf_counter() - tic, 2)
    )
    if isinstance(clf, Ridge):
        out["lambdas"] = clf.lambdas
    if oracle_task:
        # after the loop: `scores`, `classes`, `test_rows` are the last task's (all test rows)
        task_of_label = {int(c): t for t, cs in enumerate(data["task_classes"]) for c in cs}
        class_task = torch.tensor([task_of_label[int(c)] for c in classes])
        true_task = torch.from_numpy(tte[test_rows]).long()
        masked = scores.masked_fill(class_task[None, :] != true_task[:, None], float("-inf"))
        correct = classes[masked.argmax(-1)].numpy() == yte.numpy()[test_rows]
        per_task = [float(correct[tte[test_rows] == t].mean()) for t in range(len(data["task_classes"]))]
        out["final_avg_acc_oracle_task"] = float(np.mean(per_task))
        out["final_acc_oracle_task_per_task"] = per_task
    return out


def cell(values: list[float]) -> str:
    v = [100 * x for x in values]
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def tables(results: dict[str, Any], seeds: list[int]) -> str:
    lines = []
    for config, by_feat in results.items():
        have = {int(k) for by_clf in by_feat.values() for runs in by_clf.values() for k in runs}
        shown = [s for s in seeds if s in have]
        lines += [f"### {config} ({len(shown)} seed{'s' if len(shown) > 1 else ''}: {shown})", ""]
        lines += [
            "| features | dim | classifier | final avg acc | task-id acc (final) | avg inc acc | per seed (final acc) |"
        ]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for feat, by_clf in by_feat.items():
            for name, runs in by_clf.items():
                runs = [runs[str(s)] for s in seeds if str(s) in runs]
                if not runs:
                    continue
                per_seed = " / ".join(f"{100 * r['final_avg_acc']:.1f}" for r in runs)
                lines.append(
                    f"| {feat} | {runs[0]['dim']} | {name} | {cell([r['final_avg_acc'] for r in runs])} "
                    f"| {cell([r['task_id'] for r in runs])} | {cell([r['avg_inc_acc'] for r in runs])} | {per_seed} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["cifar10_vit_tiny_5tasks", "clinc150_minilm_10tasks"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--features", nargs="*", help="Feature sets to evaluate (default: all of the config's).")
    p.add_argument("--classifiers", nargs="*", help="Classifiers to evaluate (default: all).")
    p.add_argument("--max_pc_dim", type=int, default=400, help="Per-class covariance methods only up to this dim.")
    p.add_argument(
        "--max_train_per_class",
        nargs="*",
        type=int,
        help="Training budgets per class to probe (the recipe's --max_train_per_class; default: the config's). Each "
        "non-default budget N is reported as '<config> @ N/class' and cached separately.",
    )
    p.add_argument(
        "--oracle_task",
        metavar="OUT",
        help="Also compute each classifier's oracle-task final accuracy (scores restricted to the true task's "
        "classes) and write only a comparison with the recipe's metrics.json (OUT.md / OUT.json; router_probe.json "
        "is left alone).",
    )
    p.add_argument("--title", default="Router probe: sample-free classifiers on frozen features (issue 12)")
    p.add_argument("--out", default=str(REPO / "results" / "continual" / "router_probe"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out_json = Path(a.out + ".json")
    saved = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results: dict[str, Any] = {} if a.oracle_task else saved.get("results", {})
    factories = classifiers(a.max_pc_dim)
    budgets = a.max_train_per_class or [None]
    for config, budget in [(c, b) for c in a.configs for b in budgets]:
        key = config if budget is None else f"{config} @ {budget}/class"
        for seed in a.seeds:
            data = extract(config, seed, max_train_per_class=budget)
            for feat, fn in feature_sets(data).items():
                if a.features and feat not in a.features:
                    continue
                for name, factory in factories.items():
                    if a.classifiers and name not in a.classifiers:
                        continue
                    r = run_one(data, fn, factory, seed, oracle_task=bool(a.oracle_task))
                    if r is None:
                        continue
                    results.setdefault(key, {}).setdefault(feat, {}).setdefault(name, {})[str(seed)] = r
                    print(
                        f"{key} s{seed} {feat:>16} {name:>10}: acc {100 * r['final_avg_acc']:.1f} "
                        f"task-id {100 * r['task_id']:.1f}"
                        f"{' oracle-task %.1f' % (100 * r['final_avg_acc_oracle_task']) if a.oracle_task else ''} "
                        f"({r['seconds']}s){' lam ' + str(r['lambdas']) if 'lambdas' in r else ''}",
                        flush=True,
                    )
            if not a.oracle_task:
                write(out_json, results, a)
    if a.oracle_task:
        write_oracle(Path(a.oracle_task), results)
    else:
        write(out_json, results, a)


# recipe run directories (results/continual/<dir>_s<seed>/metrics.json) to compare with, per config
RECIPE_RUNS = {
    "cifar10_vit_tiny_5tasks": [("cifar10", "cls")],
    "clinc150_minilm_10tasks": [("clinc150", "mean"), ("clinc150_q3", "mean@4-6")],
}


def write_oracle(out: Path, results: dict[str, Any]) -> None:
    """Probe LDA / NMC (routed and oracle-task) next to the recipe's LN bank and LDA from metrics.json."""
    rows = []
    for config, by_feat in results.items():
        for run_dir, feat in RECIPE_RUNS.get(config, []):
            if feat not in by_feat:
                continue
            for seed in sorted({int(s) for r in by_feat[feat].values() for s in r}):
                row: dict[str, Any] = {"config": config, "features": feat, "run": f"{run_dir}_s{seed}", "seed": seed}
                for name, runs in by_feat[feat].items():
                    r = runs.get(str(seed))
                    if r is not None:
                        row[f"{name}_routed"] = r["final_avg_acc"]
                        row[f"{name}_oracle_task"] = r["final_avg_acc_oracle_task"]
                        row[f"{name}_task_id"] = r["task_id"]
                path = REPO / "results" / "continual" / f"{run_dir}_s{seed}" / "metrics.json"
                if path.is_file():
                    m = json.loads(path.read_text())["methods"]
                    row["bank_oracle_task"] = m["ln-bank"].get("final_acc_oracle_task")
                    row["bank_routed"] = m["ln-bank"]["final_avg_acc"]
                    row["recipe_lda_routed"] = m["lda"]["final_avg_acc"]
                rows.append(row)
    command = "OMP_NUM_THREADS=1 python recipes/continual/experiments/router_probe.py " + shlex.join(sys.argv[1:])
    machine = machine_info()
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    cols = [
        ("lda_routed", "LDA routed (probe)"),
        ("recipe_lda_routed", "LDA routed (recipe metrics.json)"),
        ("lda_oracle_task", "LDA oracle-task"),
        ("nmc_routed", "NMC routed"),
        ("nmc_oracle_task", "NMC oracle-task"),
        ("bank_routed", "bank routed"),
        ("bank_oracle_task", "bank oracle-task"),
    ]
    md = [
        "# Training-free LDA with the true task (oracle routing) vs the LN bank's oracle-task accuracy",
        "",
        "Final average accuracy (mean over tasks of per-task accuracy after the last task, %). *Oracle-task*: the",
        "prediction is the argmax of the classifier's scores restricted to the classes of the sample's true task.",
        "LDA / NMC: `router_probe.py` on the cached frozen features (`results/tmp/router_probe/`, default budgets, no",
        "new extraction), the recipe's query features (`cls` for CIFAR-10, `mean` for CLINC150) and, for the",
        "3-layer-query run (`clinc150_q3`), `mean@4-6` (masked means of layers 4, 5, 6). Bank and recipe-LDA columns:",
        "`results/continual/<run>/metrics.json` (`methods.ln-bank.final_acc_oracle_task`, `.final_avg_acc`,",
        "`methods.lda.final_avg_acc`).",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        f"Machine: {machine}.",
        "",
        "| config | run | features | seed | " + " | ".join(c[1] for c in cols) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    for row in rows:
        md.append(
            f"| {row['config']} | {row['run']} | {row['features']} | {row['seed']} | "
            + " | ".join(pct(row.get(c[0])) for c in cols)
            + " |"
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["config"], row["run"].rsplit("_s", 1)[0]), []).append(row)
    md += ["", "Mean ± sample std over seeds:", ""]
    md.append("| config | run | " + " | ".join(c[1] for c in cols) + " |")
    md.append("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    for (config, run_dir), g in groups.items():
        vals = [[r.get(c[0]) for r in g] for c in cols]
        md.append(
            f"| {config} | {run_dir} | "
            + " | ".join(cell(v) if all(x is not None for x in v) else "–" for v in vals)
            + " |"
        )
    Path(str(out) + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def machine_info() -> dict[str, Any]:
    """The facts of this machine that the probe's timings depend on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def write(out_json: Path, results: dict[str, Any], a: argparse.Namespace) -> None:
    seeds = sorted({int(s) for c in results.values() for f in c.values() for r in f.values() for s in r})
    command = "OMP_NUM_THREADS=1 python recipes/continual/experiments/router_probe.py " + shlex.join(sys.argv[1:])
    machine = machine_info()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out_json.read_text()).get("commands", []) if out_json.is_file() else []
    commands = previous + ([command] if command not in previous else [])
    out_json.write_text(json.dumps({"commands": commands, "machine": machine, "results": results}, indent=1))
    md = [
        f"# {a.title}",
        "",
        "Commands (each adds its rows to the .json; `recipes/continual/experiments/router_probe.py`, see its docstring",
        "for every method):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Machine: {machine}.",
        "",
        "Final average accuracy = mean over tasks after the last task (the recipe's headline); task-id = fraction of",
        "all test samples whose predicted class belongs to their true task, after the last task. Mean ± sample std",
        "over seeds; each seed has its own class order and subsample (the recipe's).",
        "",
        tables(results, seeds),
    ]
    Path(str(out_json)[: -len(".json")] + ".md").write_text("\n".join(md))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
