# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Score MiniLM's LayerNorm scalars by diagonal Fisher on real SST-2 sentences, plot them, and test a finding.

    python recipes/fisher/score_minilm.py --num_samples 512 --out fisher.png
    python recipes/fisher/score_minilm.py --data ../shared/data/glue/sst2 --kind true --seed 1

Loads the packaged all-MiniLM-L6-v2 encoder (or ``--model``) with a fresh 2-way classification head, scores its norms on
the first SST-2 training sentences (default: the subset shipped in ``lntune/data/glue/sst2``), writes the plot
(``lntune.fisher.plot.plot_scores``) and prints the top norms, the mean score per role and whether "the output
LayerNorm matters most" (role ``output`` has a higher mean score than role ``attention``) holds.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import torch

from lntune.assets import GLUE_DIR, minilm_dir
from lntune.fisher import select_by_fisher, summarize_selection, top_modules
from lntune.fisher.plot import output_ln_finding, plot_scores, role_means

DEFAULT_SST2 = GLUE_DIR / "sst2"  # the SST-2 subset shipped with the package (see its NOTICE.md)


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


def main(argv: list[str] | None = None) -> int:
    """CLI: score MiniLM (or ``--model``) on SST-2 train sentences, plot, print top norms and role means."""
    parser = argparse.ArgumentParser(prog="python recipes/fisher/score_minilm.py", description=__doc__.splitlines()[0])
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

    from lntune.fisher import fisher_scores

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
