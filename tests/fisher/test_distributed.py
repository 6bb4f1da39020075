# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Two real processes (torchrun, gloo on CPU) give the same Fisher scores as one process over the same samples."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lntune.fisher import fisher_scores

from . import distributed_worker

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to the interpreter")
def test_two_processes_match_one(tmp_path: Path) -> None:
    out = tmp_path / "scores.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        str(TORCHRUN),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(Path(distributed_worker.__file__)),
        str(out),
    ]
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{err.stderr}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    per_rank = [torch.load(f"{out}.rank{r}") for r in (0, 1)]
    assert all(n > 0 for n in per_rank) and sum(per_rank) == 2 * distributed_worker.NUM_SAMPLES  # two kinds
    results = torch.load(out)
    for kind in ("empirical", "true"):
        model, loader = distributed_worker.build()
        single = fisher_scores(
            model, loader, num_samples=distributed_worker.NUM_SAMPLES, kind=kind, progress=False, seed=5
        )
        got = results[kind]
        assert got["num_samples"] == single.num_samples == distributed_worker.NUM_SAMPLES
        assert list(got["scores"]) == list(single)
        for name, per_param in single.items():
            for pname, ref in per_param.items():
                rel = ((got["scores"][name][pname] - ref).abs() / ref.abs().clamp(min=1e-12)).max()
                assert rel <= 1e-5, (kind, name, pname, float(rel))
