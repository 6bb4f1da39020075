# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Issue 12: route the two-pass LN bank with a *first-session-adapted* query (RanPAC / SLCA-style), offline.

Today the bank's router is a streamed shrunk LDA (:class:`~lntune.continual.router.ClassStatistics`) on the *frozen*
backbone's query. First-session adaptation (RanPAC, SLCA, ADAM/APER) instead adapts the backbone on the first task
only and then keeps it as a fixed feature extractor for a training-free classifier. Here the routing query is the
bank's query (the same layers and pooling as ``LNBank.query``, ``query_layers`` included) computed under

- ``frozen``: the base model (today's router; the baseline row, which reproduces the recipe's run exactly);
- ``task_0``: task 0's LN values (adapter ``task_0``, trained on task 0 only: a real router has it from step 0 on);
- ``last``: the last task's LN values (DIAGNOSTIC: at step s < T-1 a real router does not have them yet);
- ``avg``: the average of all T tasks' LN deltas as one extra adapter (DIAGNOSTIC, same reason).

For each query model the LDA statistics are fitted task by task on the query features of each task's training
samples (statistics only, streamed, as the bank's router) and after each task ``s`` every test sample of tasks
``0..s`` is routed to the task of the LDA's argmax class. Within the chosen task the class is predicted exactly as the
bank does (``lda+head``: the head of the step-``s`` checkpoint on the chosen task's routed features, log-softmax over
the task's classes, plus the router LDA's class log-posterior renormalised to them). The LDA in that product is the
query model's own LDA (it replaces the router); the column ``final (frozen-LDA posterior)`` keeps the frozen LDA in the
product and changes only the task choice. The LN values of task ``t`` never change after task ``t`` (checked), so the
routed features under every adapter are computed once from the final checkpoint; the head is each step's own.

Features (every train and test sample under the base model, every task's adapter and the average adapter, one pass
per batch with the rows repeated) are cached in ``--cache``. ``--reuse`` takes the cache of
``adapted_task_scores.py`` (base + every adapter, for ``query_layers = 1``) so only the average adapter is computed::

    python recipes/continual/experiments/first_session_query.py --output_dir /tmp/runs/c10_s0_L11 --seed 0 \
        --reuse /tmp/ats_s0.pt --cache /tmp/fsq_c10_s0.pt --json results/continual/first_session_query.json
    python recipes/continual/experiments/first_session_query.py --config clinc150_minilm_10tasks --query_layers 3 \
        --output_dir /tmp/runs/clinc_q3_s0 --seed 0 --cache /tmp/fsq_clinc_s0.pt \
        --json results/continual/first_session_query.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapted_task_scores import recipe  # noqa: E402  (the recipe's run.py, imported there)

from lntune.continual import as_encoder, latest_checkpoint, load_bank  # noqa: E402
from lntune.continual.checkpoint import load_checkpoint  # noqa: E402
from lntune.continual.router import ClassStatistics  # noqa: E402
from lntune.continual.stream import make_loader  # noqa: E402
from lntune.tuner import BASE_ADAPTER  # noqa: E402

AVG = "avg_all_tasks"
QUERIES = ("frozen", "task_0", "last", "avg")


# ---------------------------------------------------------------------------------------------- features
@torch.no_grad()
def multi_query(bank, names: list[str], inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (n, K, query_dim), final pooled features (n, K, dim)) of a batch under each of the K adapters
    `names`: `LNBank.query` (pooled inputs of the last query_layers - 1 blocks + the final feature) with the adapter
    given instead of the base model, one pass with every row repeated K times."""
    k = len(names)
    rep = {key: v.repeat_interleave(k, 0) for key, v in inputs.items()}
    n = len(next(iter(inputs.values())))
    q = bank.query(adapter_names=names * n, **rep)
    final = q[:, -q.shape[-1] // bank.query_layers :]  # every pooled part has the hidden size
    return q.view(n, k, -1), final.view(n, k, -1)


def add_average_adapter(bank) -> None:
    """A new adapter whose every LN delta is the mean of all tasks' deltas."""
    bank.model.add_adapter(AVG, copy.deepcopy(bank.lntune_config))
    params = [bank.model.base_model.adapter_params(bank.adapter_name(t)) for t in range(bank.num_tasks)]
    with torch.no_grad():
        for name, p in bank.model.base_model.adapter_params(AVG).items():
            p.copy_(torch.stack([q[name] for q in params]).mean(0))


def features(bank, stream, which: str, names: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.arange(len(stream.labels(which)))
    qs, fs = [], []
    for i, (_, inputs) in enumerate(make_loader(stream, which, rows, size, 0)):
        q, f = multi_query(bank, names, inputs)
        qs.append(q)
        fs.append(f)
        if i % 10 == 0:
            print(f"{which} batch {i + 1}/{math.ceil(len(rows) / size)}", flush=True)
    return torch.cat(qs), torch.cat(fs)


def load_or_compute(args, own) -> dict:
    if own.cache and Path(own.cache).exists():
        return torch.load(own.cache, weights_only=False)
    base, info = recipe.load_backbone(args.model, args.modality)
    stream = recipe.load_stream(args, info)
    root = Path(args.output_dir) / "checkpoints" / "ln-bank"
    found = latest_checkpoint(root)
    if found is None or found[0] != stream.num_tasks - 1:
        raise ValueError(f"No final ln-bank checkpoint under {root} (found {found}).")
    bank, _ = load_bank(found[1], copy.deepcopy(as_encoder(base).requires_grad_(False)))
    bank.eval()
    T = bank.num_tasks
    # task t's LN values never change after task t: check task_0 .. task_{T-2} at their own step vs the final one
    final_tensors, _ = load_checkpoint(found[1])
    heads, unchanged = [], True
    for s in range(T):
        tensors, _ = load_checkpoint(root / f"task_{s:03d}")
        heads.append((tensors["classifier.weight"].float(), tensors["classifier.bias"].float()))
        pre = f"adapters.{bank.adapter_name(s)}."
        for key, v in tensors.items():
            if key.startswith(pre):
                unchanged &= bool(torch.equal(v, final_tensors[key]))
    add_average_adapter(bank)
    adapters = [bank.adapter_name(t) for t in range(T)]
    d = {"train_labels": torch.from_numpy(stream.train_labels), "test_labels": torch.from_numpy(stream.test_labels)}
    tic = time.perf_counter()
    if own.reuse:
        if bank.query_layers != 1:
            raise ValueError("--reuse holds final features only: it needs query_layers = 1.")
        old = torch.load(own.reuse, weights_only=False)
        assert torch.equal(old["test_labels"], d["test_labels"]) and torch.equal(
            old["train_labels"], d["train_labels"]
        )
        for which in ("train", "test"):
            _, f_avg = features(bank, stream, which, [AVG], own.batch_size)
            f = torch.cat([old[f"{which}_frozen"].unsqueeze(1), old[f"{which}_adapted"], f_avg], 1)
            d[f"{which}_q"], d[f"{which}_f"] = f, f
    else:
        names = [BASE_ADAPTER, *adapters, AVG]
        for which in ("train", "test"):
            d[f"{which}_q"], d[f"{which}_f"] = features(bank, stream, which, names, own.batch_size)
    d["feature_s"] = time.perf_counter() - tic
    d["names"] = ["frozen", *adapters, "avg"]
    d["heads"] = heads
    d["lns_unchanged_after_their_task"] = unchanged
    d["task_classes"] = bank.task_classes
    d["query_layers"] = bank.query_layers
    d["bank_task_pred"] = bank.task_scores(d["test_q"][:, 0]).argmax(-1).cpu()  # the bank's own final routing
    d["checkpoint"] = str(found[1])
    if own.cache:
        torch.save(d, own.cache)
    return d


# ---------------------------------------------------------------------------------------------- evaluation
def lda_head(lp: torch.Tensor, f: torch.Tensor, head, task: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
    """The bank's `lda+head` prediction within `task` (per row): head log-softmax + LDA posterior renormalised."""
    W, b = head
    keep = ct.unsqueeze(0) == task.unsqueeze(1)
    h = (f.float() @ W.T + b).double().masked_fill(~keep, -math.inf).log_softmax(1)
    p = lp.masked_fill(~keep, -math.inf).log_softmax(1)
    return (h + p).argmax(1)


def class_log_posterior(stats: ClassStatistics, q: torch.Tensor, C: int) -> torch.Tensor:
    g, classes = stats.scores(q)
    out = torch.full((len(q), C), -math.inf, dtype=torch.float64)
    out[:, classes] = g
    return out.log_softmax(1)


def evaluate(d: dict) -> dict:
    ct = torch.full((sum(len(c) for c in d["task_classes"]),), -1, dtype=torch.long)
    for t, cs in enumerate(d["task_classes"]):
        ct[cs] = t
    T, C, names = len(d["task_classes"]), len(ct), d["names"]
    ytr, yte = d["train_labels"], d["test_labels"]
    ttr, tte = ct[ytr], ct[yte]
    col = {"frozen": 0, "task_0": names.index("task_0"), "last": names.index(f"task_{T - 1}"), "avg": len(names) - 1}
    f_all = d["test_f"][:, 1 : T + 1]  # (n, T, dim): routed features under each task's adapter
    rows_n = torch.arange(len(yte))
    out = {}
    frozen_lp = []  # the frozen LDA posterior per step, for the "frozen posterior within the task" column
    for qname in QUERIES:
        qtr, qte = d["train_q"][:, col[qname]], d["test_q"][:, col[qname]]
        stats = ClassStatistics(C, qtr.shape[1])
        acc = np.full((T, T), np.nan)
        acc_fp, acc_lda, tid, oracle_last = np.full((T, T), np.nan), np.full((T, T), np.nan), [], None
        for s in range(T):
            stats.update(qtr[ttr == s], ytr[ttr == s])  # streamed: task s's training samples only
            seen = tte <= s
            lp = class_log_posterior(stats, qte[seen], C)
            if qname == "frozen":
                frozen_lp.append(lp)
            task = ct[lp.argmax(1)]
            f = f_all[rows_n[seen], task]
            pred = lda_head(lp, f, d["heads"][s], task, ct)
            pred_fp = lda_head(frozen_lp[s], f, d["heads"][s], task, ct)
            y, tt = yte[seen], tte[seen]
            for t in range(s + 1):
                acc[s, t] = float((pred[tt == t] == y[tt == t]).double().mean())
                acc_fp[s, t] = float((pred_fp[tt == t] == y[tt == t]).double().mean())
                acc_lda[s, t] = float((lp.argmax(1)[tt == t] == y[tt == t]).double().mean())
            tid.append(float((task == tt).double().mean()))
            if s == T - 1:
                if qname == "frozen":
                    out["bank_router_matches"] = bool(torch.equal(task, d["bank_task_pred"]))
                    o = lda_head(lp, f_all[rows_n, tt], d["heads"][s], tt, ct)
                    oracle_last = 100 * float(np.mean([(o[tt == t] == y[tt == t]).double().mean() for t in range(T)]))

        def inc(a):
            return 100 * float(np.mean([np.mean(a[s, : s + 1]) for s in range(T)]))

        out[qname] = {
            "final_avg_acc": 100 * float(np.mean(acc[-1])),
            "avg_inc_acc": inc(acc),
            "task_id_final": 100 * tid[-1],
            "task_id_per_step": [100 * x for x in tid],
            "final_avg_acc_frozen_posterior": 100 * float(np.mean(acc_fp[-1])),
            "avg_inc_acc_frozen_posterior": inc(acc_fp),
            "lda_alone_final": 100 * float(np.mean(acc_lda[-1])),
            "lda_alone_avg_inc": inc(acc_lda),
            "acc_matrix": acc.tolist(),
        }
        if oracle_last is not None:
            out["oracle_task_final_avg_acc"] = oracle_last
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", help="Feature cache (.pt): computed if missing, read if present.")
    p.add_argument("--reuse", help="adapted_task_scores.py's cache (base + every adapter; query_layers = 1).")
    p.add_argument("--batch_size", type=int, default=25, help="Samples per pass (x the number of query models).")
    p.add_argument("--json", help="Add this run's results to this .json file (keyed by config and seed).")
    own, rest = p.parse_known_args(argv)
    args = recipe.parse_args(rest)
    torch.set_num_threads(1)
    d = load_or_compute(args, own)
    tic = time.perf_counter()
    out = evaluate(d)
    recorded = json.loads((Path(args.output_dir) / "metrics.json").read_text())["methods"]["ln-bank"]
    out["frozen_reproduces_run_acc_matrix"] = bool(
        np.allclose(
            np.array(out["frozen"]["acc_matrix"])[np.tril_indices(len(d["names"]) - 2)],
            np.array(recorded["acc_matrix"], dtype=float)[np.tril_indices(len(d["names"]) - 2)],
        )
    )
    out |= {
        "config": args.config,
        "seed": args.seed,
        "output_dir": args.output_dir,
        "checkpoint": d["checkpoint"],
        "query_layers": d["query_layers"],
        "lns_unchanged_after_their_task": d["lns_unchanged_after_their_task"],
        "recorded_ln_bank": {k: recorded[k] for k in ("final_avg_acc", "avg_inc_acc", "final_acc_oracle_task")},
        "feature_s": round(d["feature_s"], 1),
        "eval_s": round(time.perf_counter() - tic, 1),
        "n_train": len(d["train_labels"]),
        "n_test": len(d["test_labels"]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    print({k: v for k, v in out.items() if k not in QUERIES})
    print(
        "| query | final avg acc | avg inc acc | task-id (final) | final (frozen-LDA posterior) | LDA alone (final) |"
    )
    for q in QUERIES:
        r = out[q]
        print(
            f"| {q} | {r['final_avg_acc']:.1f} | {r['avg_inc_acc']:.1f} | {r['task_id_final']:.1f} | "
            f"{r['final_avg_acc_frozen_posterior']:.1f} | {r['lda_alone_final']:.1f} |"
        )
        print("   task-id per step", " / ".join(f"{x:.1f}" for x in r["task_id_per_step"]))
    if own.json:
        path = Path(own.json)
        allr = json.loads(path.read_text()) if path.exists() else {}
        allr[f"{args.config or 'cifar10_vit_tiny_5tasks'}|seed{args.seed}"] = out
        path.write_text(json.dumps(allr, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
