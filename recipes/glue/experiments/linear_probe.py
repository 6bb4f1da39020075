# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The frozen-feature floor: a linear head on the frozen model's pooled features, per GLUE task.

    python recipes/glue/experiments/linear_probe.py --tasks cola stsb rte sst2 mrpc --data_dir ../shared/data/glue \\
        --max_train_samples 4000 --out results/glue_probe_minilm_4k.md

Same data as ``search.py --max_train_samples N --validation_split_percentage 20``: a seeded N-example training
subset, 80% to fit and the held-out 20% to score (the dev set is not read). Features are the frozen model's
mean-pooled token states and its [CLS] pooler output (no training of the backbone), and on sentence-pair tasks also
the bi-encoder features this sentence-embedding checkpoint was trained for: each sentence encoded alone and
mean-pooled, ``[u, v, |u - v|, u * v]`` (Sentence-BERT's classification features); the head is scikit-learn's
``LogisticRegression`` (classification, C from a small grid by 5-fold CV on the 80%; also with balanced class
weights, so that it cannot fall back to the majority class) or ``RidgeCV`` (STS-B; its balanced column repeats it).
What it answers: how much of a task the pretrained features already separate linearly. LN tuning can only rescale and shift
channels inside the network, so a task on which this floor sits at chance is one where LN tuning has to build the
signal from little, while full fine-tuning can rewrite the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run_glue  # noqa: E402  (the recipe: default model, metrics)
import sweep  # noqa: E402

from lntune.glue import TASKS, glue_metric, load_glue  # noqa: E402
from lntune.io import write_text  # noqa: E402


@torch.no_grad()
def features(model, tokenizer, texts: list[list[str]], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Mean-pooled last hidden states and the pooler output of every example."""
    means, cls = [], []
    for start in range(0, len(texts[0]), batch_size):
        batch = [column[start : start + batch_size] for column in texts]
        enc = tokenizer(*batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
        out = model(**enc)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        means.append(((out.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
        cls.append(out.pooler_output.numpy())
    return {"mean": np.concatenate(means), "cls": np.concatenate(cls)}


def siamese(model, tokenizer, texts: list[list[str]]) -> np.ndarray:
    """Sentence-BERT pair features ``[u, v, |u - v|, u * v]``, each sentence encoded and mean-pooled on its own."""
    u, v = (features(model, tokenizer, [column])["mean"] for column in texts)
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def probe(task: str, args: argparse.Namespace, model, tokenizer) -> dict[str, float]:
    spec = TASKS[task]
    raw = load_glue(args.data_dir, task, args.max_train_samples, None, seed=args.seed)
    held = raw["train"].train_test_split(test_size=0.2, seed=args.seed)  # run_glue --validation_split_percentage 20
    fit, test = held["train"], held["test"]
    x_fit = features(model, tokenizer, [fit[k] for k in spec.text_keys])
    x_test = features(model, tokenizer, [test[k] for k in spec.text_keys])
    if len(spec.text_keys) == 2:
        x_fit["siamese"] = siamese(model, tokenizer, [fit[k] for k in spec.text_keys])
        x_test["siamese"] = siamese(model, tokenizer, [test[k] for k in spec.text_keys])
    y_fit, y_test = np.asarray(fit["label"]), np.asarray(test["label"])
    key = run_glue.PRIMARY_METRIC[task]
    scores: dict[str, float] = {}
    for name in x_fit:
        mu, sd = x_fit[name].mean(0), x_fit[name].std(0) + 1e-6
        a, b = (x_fit[name] - mu) / sd, (x_test[name] - mu) / sd
        if spec.is_regression:
            head = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(a, y_fit)
            scores[name] = scores[f"{name}_balanced"] = 100 * glue_metric(task, head.predict(b), y_test)[key]
            continue
        for weight in (None, "balanced"):  # balanced: the probe cannot fall back to the majority class
            head = LogisticRegressionCV(Cs=np.logspace(-4, 1, 6), cv=5, max_iter=2000, class_weight=weight)
            head.fit(a, y_fit)
            scores[name if weight is None else f"{name}_{weight}"] = (
                100 * glue_metric(task, head.predict(b), y_test)[key]
            )
    return scores


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Linear probe on frozen pooled features, per GLUE task.")
    parser.add_argument("--tasks", nargs="+", default=["cola", "stsb", "rte", "sst2", "mrpc"], choices=sorted(TASKS))
    parser.add_argument("--model", default=run_glue.default_model())
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--max_train_samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Markdown file for the table (default: print only).")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    lines = [
        "| Task (metric) | mean-pooled | mean-pooled, balanced | [CLS] pooler | [CLS] pooler, balanced "
        "| pair, each sentence alone | pair, each sentence alone, balanced |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task in args.tasks:
        scores = probe(task, args, model, tokenizer)
        label = f"{sweep.TASK_LABELS.get(task, task)} ({run_glue.PRIMARY_METRIC[task]})"
        columns = ("mean", "mean_balanced", "cls", "cls_balanced", "siamese", "siamese_balanced")
        cells = " | ".join(f"{scores[k]:.1f}" if k in scores else "n/a" for k in columns)
        lines.append(f"| {label} | {cells} |")
        print(lines[-1], flush=True)
    command = "python recipes/glue/experiments/linear_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            f"# Linear probe on frozen features: {sweep.model_name(args.model)}",
            "",
            f"- command: `{command}`",
            f"- data: seeded {args.max_train_samples}-example training subsets, fit on 80%, scored on the held-out "
            "20% (the dev set is not read), x100",
            f"- machine: {sweep.machine()}",
            "",
            *lines,
            "",
        ]
    )
    if args.out:
        write_text(Path(args.out), text)
    return text


if __name__ == "__main__":
    print(main(sys.argv[1:]))
