# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Frozen mean-pooled MiniLM queries of the CLINC150 config (train/test) -> a .pt file.

python recipes/continual/experiments/clinc_q.py ARGS (see the README, issue-12 section)
"""

import sys

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import run as recipe

from lntune.continual import LNBank, as_encoder
from lntune.continual.stream import make_loader

args = recipe.parse_args(["--config", "clinc150_minilm_10tasks"] + sys.argv[2:])
base, info = recipe.load_backbone(args.model, args.modality)
stream = recipe.load_stream(args, info)
bank = LNBank(as_encoder(base, pooling=args.pooling), num_classes=1).eval()
out = {}
for which in ("train", "test"):
    rows = np.arange(len(stream.labels(which)))
    qs = [bank.query(**inputs) for _, inputs in make_loader(stream, which, rows, 128, 0)]
    out[which] = torch.cat(qs)
out["train_labels"], out["test_labels"] = torch.from_numpy(stream.train_labels), torch.from_numpy(stream.test_labels)
out["task_classes"] = [stream.task_classes(t) for t in range(stream.num_tasks)]
torch.save(out, sys.argv[1])
