# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Re-route a finished two-pass bank: final accuracy and task-id accuracy under each router and top-k vote.

Loads the last ``ln-bank`` checkpoint of a ``run.py`` output folder and evaluates it on the test samples of all tasks
with the same LN values and heads, changing only how each sample's task is chosen: the learnt keys, the LDA
statistics (if the bank has them) and LDA top-k voting (the ``k`` best tasks of the router all run, the inference
head's highest logit within each candidate's classes decides). The head was rectified under the run's own router,
so the other rows are "what if this router had been used at the last step" numbers::

    python recipes/continual/route_eval.py --output_dir /tmp/runs/cifar10_lda --topk 1 2 3 [--run flags as given]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as recipe  # noqa: E402

from lntune.continual import RunContext, as_encoder, latest_checkpoint, load_bank  # noqa: E402
from lntune.continual.stages import evaluate  # noqa: E402


def main(argv: list[str]) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topk", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--method", default="ln-bank", help="Which method's checkpoints to load.")
    own, rest = p.parse_known_args(argv)
    args = recipe.parse_args(rest)
    base, info = recipe.load_backbone(args.model, args.modality)
    encoder = as_encoder(base, pooling=args.pooling).requires_grad_(False)
    stream = recipe.load_stream(args, info)
    ctx = RunContext(
        stream=stream,
        make_encoder=lambda: copy.deepcopy(encoder),
        config=recipe.continual_config(args),
        log=lambda msg: None,
        progress=False,
    )
    found = latest_checkpoint(Path(args.output_dir) / "checkpoints" / own.method)
    if found is None or found[0] != stream.num_tasks - 1:
        raise ValueError(f"No final checkpoint of {own.method} under {args.output_dir}/checkpoints (found {found}).")
    bank, _ = load_bank(found[1], ctx.make_encoder())
    last, labels = stream.num_tasks - 1, stream.test_labels[stream.indices("test", stream.num_tasks - 1, seen=True)]
    true_tasks = stream.task_of("test")[stream.indices("test", last, seen=True)]
    variants = [("keys", 1)] + ([("lda", k) for k in own.topk] if bank.statistics is not None else [])
    out: dict[str, dict[str, float]] = {}
    for router, k in variants:
        bank.router, ctx.config.router_topk = router, k
        tic = time.perf_counter()
        ev = evaluate(bank, last, ctx, bank.seen_classes(last))
        pred = ev.pred(ctx.config.prediction)
        per_task = [float(np.mean(pred[true_tasks == t] == labels[true_tasks == t])) for t in range(last + 1)]
        name = router if router == "keys" else f"lda top-{k}"
        out[name] = {
            "final_avg_acc": float(np.mean(per_task)),
            "task_id_acc": float(np.mean(ev.task_pred == true_tasks)),
            "eval_s": round(time.perf_counter() - tic, 1),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
