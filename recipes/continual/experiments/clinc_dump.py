# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Add test features under every task's LN values and the head of a finished CLINC ln-bank.

python recipes/continual/experiments/clinc_dump.py ARGS (see the README, issue-12 section)
"""

import sys

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pathlib import Path

import run as recipe

from lntune.continual import as_encoder, latest_checkpoint, load_bank
from lntune.continual.stream import make_loader

args = recipe.parse_args(["--config", "clinc150_minilm_10tasks", "--output_dir", sys.argv[2], "--router", "lda"])
base, info = recipe.load_backbone(args.model, args.modality)
stream = recipe.load_stream(args, info)
found = latest_checkpoint(Path(args.output_dir) / "checkpoints" / "ln-bank")
bank, _ = load_bank(found[1], as_encoder(base, pooling=args.pooling).requires_grad_(False))
bank.eval()
T = bank.num_tasks
out = []
with torch.no_grad():
    for _, inputs in make_loader(stream, "test", np.arange(len(stream.test_labels)), 64, 0):
        n = inputs["input_ids"].shape[0]
        rep = {k: v.repeat_interleave(T, 0) for k, v in inputs.items()}
        f = bank.model(**rep, adapter_names=[bank.adapter_name(t) for _ in range(n) for t in range(T)])
        out.append(f.view(n, T, -1))
d = torch.load(sys.argv[1], weights_only=False)
d["test_adapted"] = torch.cat(out)
d["head_weight"], d["head_bias"] = bank.classifier.weight, bank.classifier.bias
torch.save(d, sys.argv[1])
print("ok")
