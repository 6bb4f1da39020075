# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Mean ± std over seeds of finished ``run.py`` outputs: one row per method and prediction rule.

    python recipes/continual/seed_table.py /tmp/runs/c10_s0 /tmp/runs/c10_s1 /tmp/runs/c10_s2 [--json out.json]

Every folder must hold a ``metrics.json`` of the same config (only the seed differs). Columns: final average accuracy
(mean over tasks, and over samples: the two protocols of ``summarize``), average incremental accuracy, forgetting,
final task-id accuracy and (banks) the oracle-task accuracy, in percent; the std is the sample std over the seeds
(``—`` with one seed).
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", help="Also write the per-seed values and the table here.")
    args = p.parse_args(argv)
    runs = [json.loads((Path(r) / "metrics.json").read_text()) for r in args.runs]
    per_run = [rows_of(m) for m in runs]
    keys = [k for k in per_run[0] if all(k in r for r in per_run)]
    seeds = [m["seed"] for m in runs]
    print(f"seeds {seeds}; {len(runs)} run(s)\n")
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
    out = {"runs": args.runs, "seeds": seeds, "values": table}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
