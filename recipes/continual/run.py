# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental learning with task-keyed LayerNorm banks (De Min et al. 2023) and baselines, with accelerate.

One run: draw a seeded class order, split the classes into ``--tasks`` tasks, then train and evaluate each
``--method`` task after task on an unmodified backbone (transformers ViT / BERT, or timm ViT), evaluating after every
task on all tasks seen so far. ``--method all`` runs ``ln-bank``, ``ln-bank-1pass``, ``nmc``, ``lda``, ``seq-ln`` and
``joint-ln`` in one go, sharing the cached frozen queries (``ln-bank-1pass`` is the late-selection one-pass bank; the
official per-layer bank runs only when named: ``--method ln-bank-layerwise``). Writes ``metrics.json`` (the first
incremental method's metrics at the top level, every method under ``methods``), ``timings.json`` and one
accuracy-matrix heatmap per method into ``--output_dir``; checkpoints after every task under
``--output_dir/checkpoints/<method>/task_XXX``. ``--evaluation_split validation`` evaluates on data held out from
training instead of the test set (CLINC150's val split, or images of each class drawn from the train folder), so that
settings such as the prediction rule are chosen without looking at the test set (``seed_table.py --choose``).

Launch (from the repository root)::

    python recipes/continual/run.py                               # default config: split CIFAR-10, ViT-Tiny, CPU
    python recipes/continual/run.py --config clinc150_minilm_10tasks
    accelerate launch recipes/continual/run.py --config cifar100_vit_base_10tasks --data /data/cifar100
    python recipes/continual/run.py --method ln-bank --key_mode task --epochs 1 --output_dir /tmp/cl --resume
    torchrun --standalone --nproc_per_node 2 recipes/continual/run.py --cpu --output_dir /tmp/cl2   # 2 CPU processes

Config files (``configs/*.json``) hold flag values; flags given on the command line override them. Relative paths in a
config file are resolved against the repository root.

Several processes (``accelerate launch --num_processes N`` / ``torchrun --nproc_per_node N``; ``--cpu`` for a gloo
group on CPU) share the work data-parallel: frozen passes and evaluation split their batches over the processes,
stage 1 splits each batch (``--batch_size`` stays the global batch) and sums the gradients, and the small replicated
steps (keys, stage 2 on the gathered features, metrics) run on every process. Every process holds the same bank;
only the main process writes checkpoints and outputs (``--output_dir`` must be visible to every process for
``--resume``). Results equal a one-process run up to float round-off (see ``lntune/continual/distributed.py``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from lntune.continual import (
    METHODS,
    ContinualConfig,
    ImageSource,
    RunContext,
    as_encoder,
    compare_key_modes,
    holdout_per_class,
    image_stream,
    load_clinc150,
    load_image_folder,
    make_class_incremental_split,
    plot_accuracy_matrix,
    run_methods,
    subsample_per_class,
    text_stream,
    vit_transform,
)
from lntune.continual.data import TextSource
from lntune.io import write_json

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "cifar10_vit_tiny_5tasks"
ALL_METHODS = ["ln-bank", "ln-bank-1pass", "nmc", "lda", "seq-ln", "joint-ln"]
MODALITIES = ("image", "text")
EVALUATION_SPLITS = ("test", "validation")
FAIL_ENV = "LNTUNE_CONTINUAL_FAIL_AFTER"  # test-only: "<method>:<task>" raises after that task's checkpoint
PATH_FLAGS = ("data", "model", "output_dir")
NOT_RECORDED = ("output_dir", "resume", "no_progress", "cpu")


class SimulatedFailure(RuntimeError):
    """Raised after a checkpoint when LNTUNE_CONTINUAL_FAIL_AFTER asks for it (tests of --resume)."""


# ---------------------------------------------------------------------------------------------------------- args
def _config_path(name: str) -> Path:
    path = Path(name)
    if path.suffix != ".json":
        path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"Config {name!r} not found (looked for {path}); shipped configs: {known}.")
    return path


def _package_path(spec: str) -> Path:
    """'pkg:<module>/<sub/path>' -> a folder inside an installed package (e.g. the MiniLM checkpoint)."""
    module, _, sub = spec.removeprefix("pkg:").partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"--model {spec}: package {module!r} is not installed.")
    return Path(list(found.submodule_search_locations)[0]) / sub


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="Config name in configs/ or a path to a JSON file.")
    p.add_argument("--modality", choices=MODALITIES, help="'image' (ImageFolder / CIFAR-100) or 'text' (CLINC150).")
    p.add_argument(
        "--data", help="Root with train/ and test/ ImageFolders, a CIFAR-100 python folder, or CLINC150 json."
    )
    p.add_argument(
        "--model", help="transformers folder or hub id, 'timm/<name>' for a timm ViT, or 'pkg:<module>/<folder>'."
    )
    p.add_argument("--tasks", type=int, help="Number of tasks (equal numbers of classes).")
    p.add_argument("--method", help=f"One of {ALL_METHODS}, a comma-separated list, or 'all'.")
    p.add_argument("--key_mode", choices=["task", "class"], help="Keys of the two-pass bank: per task or per class.")
    p.add_argument("--output_dir", help="Where metrics.json, plots and checkpoints go.")
    p.add_argument("--seed", type=int, help="Seeds the class order, the subsampling, the heads, keys and data order.")
    p.add_argument("--max_train_per_class", type=int, help="Keep at most this many training samples per class.")
    p.add_argument("--max_test_per_class", type=int, help="Keep at most this many test samples per class.")
    p.add_argument(
        "--evaluation_split",
        choices=EVALUATION_SPLITS,
        help="'test' (default) or 'validation': evaluate on data held out from training instead, to choose settings\n"
        "(e.g. the prediction rule) without the test set: CLINC150's val split; for images, --validation_per_class\n"
        "images of each class drawn from the train folder before --max_train_per_class subsampling.",
    )
    p.add_argument(
        "--validation_per_class",
        type=int,
        help="Images held out per class with --evaluation_split validation (default: --max_test_per_class, else 10%%).",
    )
    p.add_argument("--resume", action="store_true", default=None, help="Continue from the latest checkpoints.")
    p.add_argument("--image_size", type=int, help="Input resolution (default: the model's).")
    p.add_argument("--image_mean", type=float, nargs=3, help="Normalisation mean (default: the model's processor).")
    p.add_argument("--image_std", type=float, nargs=3, help="Normalisation std (default: the model's processor).")
    p.add_argument("--pooling", choices=["cls", "mean"], help="Feature pooling (default: cls for images, mean text).")
    p.add_argument("--max_length", type=int, help="Text: truncate tokenised inputs to this many tokens.")
    p.add_argument("--compare_key_modes", type=int, choices=[0, 1], help="1: also report task-id acc of both modes.")
    p.add_argument("--no_progress", action="store_true", default=None, help="Hide tqdm bars.")
    p.add_argument("--cpu", action="store_true", default=None, help="Run on CPU even if an accelerator is available.")
    # every ContinualConfig field is a flag too (epochs, batch_size, lr, rectify_epochs, ...)
    hints = typing.get_type_hints(ContinualConfig)
    for name, default in vars(ContinualConfig()).items():
        if name in ("key_mode", "seed"):
            continue
        kind = next(a for a in (typing.get_args(hints[name]) or (hints[name],)) if a is not type(None))
        parse = (lambda s: bool(int(s))) if kind is bool else kind
        p.add_argument(f"--{name}", type=parse, help=f"ContinualConfig.{name} (default {default!r}).")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first = parser.parse_args(argv)
    config_path = _config_path(first.config)
    with open(config_path, encoding="utf-8") as f:
        file_values = json.load(f)
    unknown = sorted(set(file_values) - set(vars(first)) - {"_comment"})
    if unknown:
        raise ValueError(f"{config_path} has unknown keys {unknown}; every key must be a flag of this script.")
    for key in PATH_FLAGS:
        value = file_values.get(key)
        if isinstance(value, str) and not value.startswith(("timm/", "pkg:")) and not Path(value).is_absolute():
            candidate = REPO_ROOT / value
            if key != "model" or candidate.exists():
                file_values[key] = str(candidate)
    cli = {k: v for k, v in vars(first).items() if v is not None}
    args = argparse.Namespace(**{**{k: None for k in vars(first)}, **file_values, **cli})
    if isinstance(args.model, str) and args.model.startswith("pkg:"):
        args.model = str(_package_path(args.model))
    args.config_path = str(config_path)
    # sanity checks, each with the value and the rule it breaks
    for required in ("modality", "data", "model", "tasks", "output_dir"):
        if getattr(args, required) is None:
            raise ValueError(f"--{required} is required (set it in the config file or on the command line).")
    if args.tasks < 1:
        raise ValueError(f"--tasks must be a positive integer, got {args.tasks}.")
    methods = ALL_METHODS if args.method in (None, "all") else [m.strip() for m in args.method.split(",")]
    unknown_methods = [m for m in methods if m not in METHODS]
    if unknown_methods:
        raise ValueError(f"Unknown --method {unknown_methods}; choose from {sorted(METHODS)} or 'all'.")
    args.methods = methods
    args.seed = 0 if args.seed is None else args.seed
    args.key_mode = args.key_mode or "task"
    args.resume = bool(args.resume)
    args.compare_key_modes = bool(args.compare_key_modes) if args.compare_key_modes is not None else True
    args.evaluation_split = args.evaluation_split or "test"
    if args.validation_per_class is not None and args.evaluation_split != "validation":
        raise ValueError("--validation_per_class only applies with --evaluation_split validation.")
    if args.validation_per_class is not None and args.modality == "text":
        raise ValueError(
            "--validation_per_class is for image folders; CLINC150 evaluates on its own val split "
            "(cap it with --max_test_per_class)."
        )
    for name in ("max_train_per_class", "max_test_per_class", "validation_per_class"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be positive, got {value}.")
    return args


def continual_config(args: argparse.Namespace) -> ContinualConfig:
    fields = {k: getattr(args, k) for k in vars(ContinualConfig()) if getattr(args, k, None) is not None}
    return ContinualConfig(**{**fields, "key_mode": args.key_mode, "seed": args.seed})


# ---------------------------------------------------------------------------------------------------------- model/data
def load_backbone(name: str, modality: str) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen pretrained backbone and its preprocessing facts (image size, mean/std)."""
    if name.startswith("timm/"):
        import timm

        model = timm.create_model(name.removeprefix("timm/"), pretrained=True, num_classes=0)
        data_cfg = timm.data.resolve_data_config({}, model=model)
        info = {"image_size": data_cfg["input_size"][-1], "mean": data_cfg["mean"], "std": data_cfg["std"]}
        return model.eval(), info
    transformers.logging.set_verbosity_error()
    auto = transformers.AutoModelForImageClassification if modality == "image" else transformers.AutoModel
    try:
        model = auto.from_pretrained(name)
    except ValueError:  # a bare encoder checkpoint (ViTModel): no classification class registered
        model = transformers.AutoModel.from_pretrained(name)
    info: dict[str, Any] = {"image_size": getattr(model.config, "image_size", None)}
    if modality == "image":
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(name)
            info.update(mean=processor.image_mean, std=processor.image_std)
        except (OSError, ValueError):
            info.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return model.eval(), info


def _subsample_text(source: TextSource, max_per_class: int | None, seed: int) -> TextSource:
    keep = subsample_per_class(source.labels, max_per_class, seed)
    return TextSource([source.texts[i] for i in keep], source.labels[keep], source.class_names)


def held_out_images(args: argparse.Namespace) -> tuple[ImageSource, ImageSource]:
    """(train, held-out) from the train folder: `--validation_per_class` seeded images of each class held out first
    (default `--max_test_per_class`, else 10% of the smallest class), then `--max_train_per_class` drawn from the
    rest; the test folder is not read."""
    full = load_image_folder(args.data, "train", None, args.seed)
    if args.validation_per_class is None:
        smallest = int(np.bincount(full.labels).min())  # load_image_folder refuses an empty folder
        args.validation_per_class = args.max_test_per_class or max(1, smallest // 10)
    kept, held = holdout_per_class(full.labels, args.validation_per_class, args.seed)
    train = full.subset(kept)
    train = train.subset(subsample_per_class(train.labels, args.max_train_per_class, args.seed))
    return train, full.subset(held)


def load_stream(args: argparse.Namespace, backbone_info: dict[str, Any]):
    """Data, split and stream; errors on an empty folder, too many tasks, ... come from the loaders themselves."""
    validation = args.evaluation_split == "validation"
    if args.modality == "image":
        if validation:
            train, test = held_out_images(args)
        else:
            train = load_image_folder(args.data, "train", args.max_train_per_class, args.seed)
            test = load_image_folder(args.data, "test", args.max_test_per_class, args.seed)
        class_names = train.class_names
    else:
        splits = load_clinc150(args.data)
        train = _subsample_text(splits.train, args.max_train_per_class, args.seed)
        test = _subsample_text(splits.val if validation else splits.test, args.max_test_per_class, args.seed)
        class_names = splits.intent_names
    split = make_class_incremental_split(list(class_names), num_tasks=args.tasks, seed=args.seed)
    if args.modality == "image":
        size = args.image_size or backbone_info.get("image_size") or 224
        mean = args.image_mean or backbone_info.get("mean") or (0.5, 0.5, 0.5)
        std = args.image_std or backbone_info.get("std") or (0.5, 0.5, 0.5)
        args.image_size, args.image_mean, args.image_std = size, list(mean), list(std)
        return image_stream(split, train, test, vit_transform(size, mean, std))
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    return text_stream(split, train, test, tokenizer, max_length=args.max_length or 64)


# ---------------------------------------------------------------------------------------------------------- output
def machine_info(device: torch.device, num_processes: int = 1) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "num_processes": num_processes,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the headline numbers (percent); a bank gets one row per prediction rule."""

    def pct(v: Any) -> str:
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [
        "| method | prediction | final avg acc | avg inc acc | forgetting | task-id acc (final) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        tid = r.get("task_id_acc")
        tid = tid[-1] if isinstance(tid, list) else tid
        rows = [(r.get("prediction", "—"), r)]
        rows += [(rule, m) for rule, m in r.get("predictions", {}).items() if rule != r.get("prediction")]
        for prediction, m in rows:
            lines.append(
                f"| {name} | {prediction} | {pct(m['final_avg_acc'])} | {pct(m.get('avg_inc_acc'))} "
                f"| {pct(m.get('forgetting'))} | {pct(tid)} |"
            )
    return "\n".join(lines)


def write_outputs(output_dir: Path, metrics: dict[str, Any], timings: dict[str, Any]) -> None:
    """metrics.json (deterministic: no timings), timings.json, one heatmap per method and results.md."""
    results = metrics["methods"]
    write_json(output_dir / "metrics.json", metrics, indent=1)
    write_json(output_dir / "timings.json", timings, indent=1)
    for name, r in results.items():
        if "acc_matrix" in r:
            plot_accuracy_matrix(r["acc_matrix"], output_dir / f"acc_matrix_{name}.png", title=name)
    note = (
        ""
        if metrics["evaluation_split"] == "test"
        else "Evaluated on data held out from training, not the test set.\n\n"
    )
    (output_dir / "results.md").write_text(note + results_table(results) + "\n", encoding="utf-8")


def _after_task_hook():
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return None
    method, _, task = spec.rpartition(":")

    def hook(m: str, t: int) -> None:
        if (not method or m == method) and t == int(task):
            raise SimulatedFailure(f"{FAIL_ENV}={spec}: simulated kill after {m} task {t}")

    return hook


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    # Accelerator (device, mixed precision, main-process logging), then the seed
    accelerator = Accelerator(cpu=bool(args.cpu))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state)
    set_seed(args.seed)

    # Output directory
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Backbone, data and split
    base_model, backbone_info = load_backbone(args.model, args.modality)
    base_encoder = as_encoder(base_model, pooling=args.pooling).requires_grad_(False)
    stream = load_stream(args, backbone_info)
    config = continual_config(args)
    logger.info(f"split: {stream.split.num_tasks} tasks, class order {list(stream.split.class_order)}")
    logger.info(f"config: {json.dumps(config.to_dict())}")

    def make_encoder() -> nn.Module:
        return copy.deepcopy(base_encoder)

    ctx = RunContext(
        stream=stream,
        make_encoder=make_encoder,
        config=config,
        device=accelerator.device,
        checkpoint_root=output_dir / "checkpoints",
        resume=args.resume,
        autocast=accelerator.autocast,
        after_task=_after_task_hook(),
        log=logger.info,
        progress=not args.no_progress and accelerator.is_local_main_process,
        accelerator=accelerator,
    )

    # Train and evaluate every method, task after task
    logger.info("***** Running continual learning *****")
    logger.info(f"  Methods = {args.methods}; train / test samples = {len(stream.train)} / {len(stream.test)}")
    tic = time.perf_counter()
    results = {name: r.to_dict() for name, r in run_methods(ctx, args.methods).items()}
    comparison = compare_key_modes(ctx) if ("ln-bank" in args.methods and args.compare_key_modes) else None

    # metrics.json (deterministic: no timings), timings.json, heatmaps, results.md
    primary = next((m for m in args.methods if m != "joint-ln"), args.methods[0])
    metrics = {
        "method": primary,
        **results[primary],
        "class_order": list(stream.split.class_order),
        "split": stream.split.to_dict(),
        "seed": args.seed,
        "evaluation_split": args.evaluation_split,
        # the resolved flags, minus run plumbing that does not change results (so a resumed run's file is identical)
        "config": {k: v for k, v in sorted(vars(args).items()) if k not in NOT_RECORDED}
        | {"continual": config.to_dict()},
        "machine": machine_info(accelerator.device, accelerator.num_processes),
        "methods": results,
        "key_mode_comparison": comparison,
    }
    if accelerator.is_main_process:
        write_outputs(output_dir, metrics, {"total_s": round(time.perf_counter() - tic, 1), "per_method": ctx.timings})
    logger.info("\n" + results_table(results))
    if comparison is not None:
        logger.info(f"task-id accuracy per step by key mode: {json.dumps(comparison)}")
    accelerator.wait_for_everyone()  # the outputs are complete before any process returns
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
