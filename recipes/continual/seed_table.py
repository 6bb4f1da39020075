# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Mean ± std over seeds of finished ``run.py`` outputs: one row per method and prediction rule.

    python recipes/continual/seed_table.py /tmp/runs/c10_s0 /tmp/runs/c10_s1 /tmp/runs/c10_s2 [--json out.json]

Every folder must hold a ``metrics.json`` of the same config (only the seed differs). Columns: final average accuracy
(mean over tasks, and over samples: the two protocols of ``summarize``), average incremental accuracy, forgetting,
final task-id accuracy and (banks) the oracle-task accuracy, in percent; the std is the sample std over the seeds
(``—`` with one seed).

Runs made with ``run.py --evaluation_split validation`` (held-out training data, not the test set) form a selection
table: ``--choose`` then names, for every method with several prediction rules, the rule with the best mean final
average accuracy, the rule to set in the config for the test-set runs. It refuses to choose on test-set runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS = ("final_avg_acc", "final_avg_acc_sample", "avg_inc_acc", "forgetting", "task_id", "oracle")


def rows_of(metrics: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """`{(method, rule): {column: value}}` of one run (a bank has one row per prediction rule it reports)."""
    out = {}
    for name, m in metrics["methods"].items():
        tid = m.get("task_id_acc")
        base = {"task_id": tid[-1] if isinstance(tid, list) else tid, "oracle": m.get("final_acc_oracle_task")}
        rules = m.get("predictions") or {m.get("prediction", "—"): m}
        for rule, r in rules.items():
            out[(name, rule if "predictions" in m else "—")] = {
                **base,
                **{k: r.get(k) for k in ("final_avg_acc", "final_avg_acc_sample", "avg_inc_acc", "forgetting")},
            }
    return out


def cell(values: list[Any]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def choose_rules(table: dict[str, dict[str, list[Any]]]) -> dict[str, str]:
    """`{method: rule}` for every method with more than one prediction rule: the rule with the highest mean final
    average accuracy over the seeds (ties: the first rule listed)."""
    by_method: dict[str, dict[str, float]] = {}
    for key, cols in table.items():
        method, _, rule = key.partition("/")
        values = [v for v in cols["final_avg_acc"] if v is not None]
        if rule != "—" and values:
            by_method.setdefault(method, {})[rule] = statistics.mean(values)
    return {m: max(rules, key=rules.get) for m, rules in by_method.items() if len(rules) > 1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", help="Also write the per-seed values and the table here.")
    p.add_argument("--choose", action="store_true", help="Name each bank's best rule (validation runs only).")
    args = p.parse_args(argv)
    runs = [json.loads((Path(r) / "metrics.json").read_text()) for r in args.runs]
    splits = {r: m.get("evaluation_split", "test") for r, m in zip(args.runs, runs)}
    if len(set(splits.values())) > 1:
        raise ValueError(f"The runs were evaluated on different splits {splits}; tabulate each split on its own.")
    split = next(iter(splits.values()))
    if args.choose and split != "validation":
        raise ValueError(
            "--choose picks settings, which must not be done on the test set: give runs made with "
            "run.py --evaluation_split validation."
        )
    per_run = [rows_of(m) for m in runs]
    keys = [k for k in per_run[0] if all(k in r for r in per_run)]
    seeds = [m["seed"] for m in runs]
    print(f"seeds {seeds}; {len(runs)} run(s); evaluated on the {split} split\n")
    print(
        "| method | prediction | final avg acc (task mean) | final acc (sample mean) | avg inc acc | forgetting "
        "| task-id acc (final) | oracle-task acc |"
    )
    print("| --- " * 8 + "|")
    table = {}
    for method, rule in keys:
        cols = {c: [r[(method, rule)][c] for r in per_run] for c in COLUMNS}
        table[f"{method}/{rule}"] = cols
        print(f"| {method} | {rule} | " + " | ".join(cell(cols[c]) for c in COLUMNS) + " |")
    out: dict[str, Any] = {"runs": args.runs, "seeds": seeds, "evaluation_split": split, "values": table}
    if args.choose:
        out["chosen"] = choose_rules(table)
        for method, rule in out["chosen"].items():
            print(f"\n{method}: choose prediction '{rule}' (best mean final avg acc on held-out training data)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
