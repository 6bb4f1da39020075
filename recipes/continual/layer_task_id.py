# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""How much task identity does each norm layer's [CLS] input carry? (why the single-pass bank is weak on ViT-Tiny)

The single-pass variant (``--method ln-bank-1pass``) picks the task at every norm layer from the [CLS] token of that
layer's own input, before the layer has run. This script measures, on the *frozen* pretrained model, the best that
selection can do per layer with the same train/test split as ``run.py``:

- ``task key``: the ideal learned key of each task (its normalised mean [CLS] input), cosine argmax over the tasks;
- ``centred``: the same after subtracting the mean [CLS] input of all training samples;
- ``class keys``: one prototype per class, mapped to its task (the two-pass bank's ``key_mode="class"``);
- ``key + attention``: the official code's ``--use_att`` option, a learned per-task, per-dimension weighting of the
  [CLS] input trained with the key to maximise the task's own cosine similarity (Adam, lr 0.01, orthogonal init).

It writes ``layer_task_id.json``, ``layer_task_id.md`` and ``layer_task_id.png`` to ``--output_dir``.

    python recipes/continual/layer_task_id.py --data ../shared/data/cifar10 \
        --model ../shared/data/vit-tiny-patch16-224 --tasks 5 --max_train_per_class 100 --max_test_per_class 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel

from lntune.continual import load_image_folder, make_class_incremental_split, vit_transform
from lntune.continual.data import ImageClassificationDataset
from lntune.continual.keys import orthogonal_init
from lntune.norms import find_norms

COLUMNS = ("task key", "centred", "class keys", "key + attention")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and test/ (or a CIFAR-100 folder).")
    p.add_argument("--model", required=True, help="Path of a transformers ViT checkpoint.")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="Class order seed (as run.py).")
    p.add_argument("--max_train_per_class", type=int, default=100)
    p.add_argument("--max_test_per_class", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--key_steps", type=int, default=300, help="Adam steps per task for the 'key + attention' keys.")
    p.add_argument("--output_dir", default="results/continual/layer_task_id_vit_tiny")
    return p.parse_args(argv)


@torch.no_grad()
def cls_inputs(model: nn.Module, data: ImageClassificationDataset, batch_size: int) -> dict[str, torch.Tensor]:
    """The [CLS] token of every norm layer's input, per layer, for every sample of ``data`` (frozen model)."""
    norms = list(find_norms(model))
    store: dict[str, list[torch.Tensor]] = {info.name: [] for info in norms}
    hooks = []
    for info in norms:

        def hook(module: nn.Module, args: tuple, name: str = info.name) -> None:
            if args and torch.is_tensor(args[0]) and args[0].dim() == 3:
                store[name].append(args[0][:, 0].float())

        hooks.append(info.called.register_forward_pre_hook(hook))
    try:
        model.eval()
        for pixels, _ in tqdm(torch.utils.data.DataLoader(data, batch_size=batch_size), desc="features", leave=False):
            model(pixel_values=pixels)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(values) for name, values in store.items() if values}


def _mean_keys(x: torch.Tensor, groups: np.ndarray, n: int) -> torch.Tensor:
    return torch.stack([F.normalize(F.normalize(x[groups == g], dim=-1).mean(0), dim=0) for g in range(n)])


def key_attention(x: torch.Tensor, tasks: np.ndarray, n: int, steps: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Keys and per-dimension attention learnt task after task as in the official code's --use_att option."""
    g = torch.Generator().manual_seed(seed)
    dim = x.shape[1]
    keys = nn.Parameter(orthogonal_init(n, dim, None, g))
    att = nn.Parameter(orthogonal_init(n, dim, None, g))
    for t in range(n):
        opt = torch.optim.Adam([keys, att], lr=0.01)
        xt = x[tasks == t]
        for _ in range(steps):
            loss = -(F.normalize(xt * att[t], dim=-1) @ F.normalize(keys[t], dim=0)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return keys.detach(), att.detach()


def layer_accuracies(
    train: torch.Tensor, test: torch.Tensor, y_train: np.ndarray, y_test: np.ndarray, task_of: np.ndarray, args
) -> dict[str, float]:
    """Task-id accuracy (%) on the test samples of each selection rule at one layer."""
    n_tasks, n_classes = int(task_of.max()) + 1, len(task_of)
    t_train, t_test = task_of[y_train], task_of[y_test]
    mu = train.mean(0)
    out = {}
    out["task key"] = (F.normalize(test, dim=-1) @ _mean_keys(train, t_train, n_tasks).T).argmax(1).numpy()
    centred = _mean_keys(train - mu, t_train, n_tasks)
    out["centred"] = (F.normalize(test - mu, dim=-1) @ centred.T).argmax(1).numpy()
    protos = _mean_keys(train, y_train, n_classes)
    out["class keys"] = task_of[(F.normalize(test, dim=-1) @ protos.T).argmax(1).numpy()]
    keys, att = key_attention(train, t_train, n_tasks, args.key_steps, args.seed)
    sims = (F.normalize(test.unsqueeze(1) * att, dim=-1) * F.normalize(keys, dim=-1)).sum(-1)
    out["key + attention"] = sims.argmax(1).numpy()
    return {name: round(float(100 * (pred == t_test).mean()), 1) for name, pred in out.items()}


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"# Task identity per norm layer ({header['model_name']}, {header['data_name']}, {header['tasks']} tasks)",
        "",
        f"Task-id accuracy (%) of the frozen model's [CLS] input to each norm layer; chance = "
        f"{100 / header['tasks']:.0f}%. {header['train_samples']} train / {header['test_samples']} test images "
        f"({header['max_train_per_class']} / {header['max_test_per_class']} per class), class order seed "
        f"{header['seed']}. Machine: {header['machine']}. Command: `{header['command']}`",
        "",
        "| layer | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    lines += [f"| {r['layer']} | " + " | ".join(f"{r[c]:.1f}" for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for c in COLUMNS:
        ax.plot(range(len(rows)), [r[c] for r in rows], marker="o", ms=3, label=c)
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(rows)), [r["layer"].replace("vit.", "").replace("layers.", "") for r in rows])
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.set_ylabel("task-id accuracy (%)")
    ax.set_title("Task identity in each norm layer's [CLS] input (frozen model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = AutoModel.from_pretrained(args.model, add_pooling_layer=False).requires_grad_(False)
    train_src = load_image_folder(args.data, "train", args.max_train_per_class, seed=args.seed)
    test_src = load_image_folder(args.data, "test", args.max_test_per_class, seed=args.seed)
    split = make_class_incremental_split(list(train_src.class_names), args.tasks, seed=args.seed)
    transform = vit_transform(model.config.image_size)
    tic = time.perf_counter()
    train = cls_inputs(model, ImageClassificationDataset(train_src, transform=transform), args.batch_size)
    test = cls_inputs(model, ImageClassificationDataset(test_src, transform=transform), args.batch_size)
    feature_s = time.perf_counter() - tic
    rows = []
    for name in tqdm(train, desc="layers", leave=False):
        accs = layer_accuracies(train[name], test[name], train_src.labels, test_src.labels, split.task_of_class, args)
        rows.append({"layer": name, **accs})
    header = {
        "model_name": Path(args.model).name,
        "data_name": Path(args.data).name,
        "tasks": args.tasks,
        "seed": args.seed,
        "class_order": [int(c) for c in split.class_order],
        "max_train_per_class": args.max_train_per_class,
        "max_test_per_class": args.max_test_per_class,
        "train_samples": len(train_src),
        "test_samples": len(test_src),
        "feature_seconds": round(feature_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "command": "python recipes/continual/layer_task_id.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer_task_id.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (out / "layer_task_id.md").write_text(markdown(rows, header))
    plot(rows, out / "layer_task_id.png", 100 / args.tasks)
    print(markdown(rows, header))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
