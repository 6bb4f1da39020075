# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""CoLA's dev MCC split into its in-domain and out-of-domain sentences, per method and seed.

    python recipes/glue/sweep.py --tasks cola --methods full lntune --seeds 3 --data_dir ../shared/data/glue \\
        --max_train_samples 4000 --runs_dir results/runs/glue_minilm_4k_preds --name minilm_4k \\
        --out results/tmp/sweep_preds --run_args --save_predictions
    python recipes/glue/experiments/cola_domains.py --runs_dir results/runs/glue_minilm_4k_preds \\
        --data_dir ../shared/data/glue --out results/glue_cola_domains_minilm_4k.md

GLUE's CoLA dev file joins two sets of the corpus (Warstadt et al. 2019): the in-domain dev set, drawn from the same
17 linguistics publications as the training set, and the out-of-domain dev set, from 6 others. A dev sentence counts
as in-domain here when its source (the file's first column) occurs in the training file. Held-out *training* data
(what ``search.py`` chooses settings on) is all in-domain, so a method that loses more on the dev set than on held-out
training data may be losing on the out-of-domain half: this table says which half a gap comes from. Each run must have
been trained with ``--save_predictions`` on the whole dev set (no ``--max_eval_samples``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from lntune.glue import TASKS, glue_metric, task_dir
from lntune.io import write_text

DOMAINS = ("all", "in-domain", "out-of-domain")


def read_sources(tsv: Path) -> list[tuple[str, int]]:
    """(source, label) of every row of a GLUE CoLA TSV (no header: source, label, original mark, sentence)."""
    with open(tsv, newline="", encoding="utf-8") as f:
        return [(row[0], int(row[1])) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def cola_file(data_dir: Path, split: str) -> Path:
    """CoLA's train or dev TSV under `data_dir`, in any folder layout `load_glue` reads (cola/ or CoLA/)."""
    spec = TASKS["cola"]
    return task_dir(Path(data_dir), spec) / (spec.train_file if split == "train" else spec.dev_files[split])


def domain_masks(data_dir: Path) -> dict[str, np.ndarray]:
    """Boolean mask over the dev rows for each of `DOMAINS`; in-domain = the source also occurs in train.tsv."""
    train_sources = {source for source, _ in read_sources(cola_file(data_dir, "train"))}
    dev = read_sources(cola_file(data_dir, "validation"))
    inside = np.array([source in train_sources for source, _ in dev])
    return {"all": np.ones_like(inside), "in-domain": inside, "out-of-domain": ~inside}


def run_scores(predictions: dict, masks: dict[str, np.ndarray], dev_labels: np.ndarray) -> dict[str, dict[str, float]]:
    """MCC x100 of one run's best- and last-epoch predictions on each domain of the dev set."""
    if predictions.get("task") != "cola" or predictions.get("evaluated_on") != "dev":
        raise ValueError(
            f"not a CoLA dev-set run: task {predictions.get('task')!r}, {predictions.get('evaluated_on')}"
        )
    idx = np.asarray(predictions["idx"])
    if len(idx) != len(dev_labels) or sorted(idx.tolist()) != list(range(len(dev_labels))):
        raise ValueError(
            f"the run scored {len(idx)} of the {len(dev_labels)} dev sentences: rerun it without --max_eval_samples"
        )
    labels = np.asarray(predictions["labels"])
    if not np.array_equal(labels, dev_labels[idx]):
        raise ValueError("the run's labels do not match dev.tsv: it was trained on another copy of CoLA")
    scores = {}
    for which in ("best", "last"):
        preds = np.asarray(predictions[which])
        scores[which] = {
            domain: 100 * glue_metric("cola", preds[mask[idx]], labels[mask[idx]])["matthews_correlation"]
            for domain, mask in masks.items()
        }
    return scores


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{mean(values):.1f} ± {stdev(values):.1f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="CoLA dev MCC per domain (in / out of the training sources).")
    parser.add_argument(
        "--runs_dir", type=Path, nargs="+", required=True, help="Sweep folder(s): cola/<method>/seed<k>/."
    )
    parser.add_argument("--data_dir", type=Path, required=True, help="Folder with cola/train.tsv and cola/dev.tsv.")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print only).")
    args = parser.parse_args(argv)

    masks = domain_masks(args.data_dir)
    dev_labels = np.array([label for _, label in read_sources(cola_file(args.data_dir, "validation"))])
    files = sorted(path for d in args.runs_dir for path in (d / "cola").glob("*/seed*/eval_predictions.json"))
    if not files:
        raise SystemExit(
            f"no cola/<method>/seed*/eval_predictions.json under {' '.join(map(str, args.runs_dir))}: run the sweep with "
            "--run_args --save_predictions first (see this file's docstring)"
        )
    per_method: dict[str, list[dict]] = {}
    seen: dict[tuple[str, str], Path] = {}
    for path in files:
        method, seed = path.parent.parent.name, path.parent.name
        if (method, seed) in seen:
            raise SystemExit(f"{method} {seed} is in two folders ({seen[method, seed]} and {path}): pass one of them")
        seen[method, seed] = path
        per_method.setdefault(method, []).append(run_scores(json.loads(path.read_text()), masks, dev_labels))

    counts = {d: int(m.sum()) for d, m in masks.items()}
    lines = [
        "# CoLA dev MCC by domain",
        "",
        f"- runs: {', '.join(f'`{d}`' for d in args.runs_dir)} (each method's seeds; mean ± std x100); dev sentences: {counts['all']} = "
        f"{counts['in-domain']} in-domain (sources of the training set) + {counts['out-of-domain']} out-of-domain",
        f"- command: `python recipes/glue/experiments/cola_domains.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| Method | Seeds | Epoch | " + " | ".join(DOMAINS) + " |",
        "|---|---:|---|" + "---:|" * len(DOMAINS),
    ]
    for method, runs in per_method.items():
        for which in ("best", "last"):
            cells = [_cell([r[which][d] for r in runs if not math.isnan(r[which][d])]) for d in DOMAINS]
            lines.append(f"| {method} | {len(runs)} | {which} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
