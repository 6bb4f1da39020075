# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Tests for the local GLUE metric: hand-computed values, Hub-compatible keys, evaluate module loading offline."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lntune.glue import glue_metric, load_glue_metric
from lntune.glue.metric import METRIC_CONFIGS, METRIC_SCRIPT_DIR, metric_config

REPO = Path(__file__).resolve().parents[2]

# Binary confusion with TP=3, TN=2, FP=1, FN=1 (7 examples).
REFS = [1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 0, 0]
# MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 1) / sqrt(4*4*3*3) = 5/12.
MCC = 5 / 12
# precision = recall = 3/4 -> F1 = 3/4; accuracy = 5/7.
F1, ACC = 0.75, 5 / 7

# STS-B: x = [1, 2, 3, 4], y = [1, 2, 3, 10]. Same ranks -> Spearman 1. Pearson: centred x = [-1.5, -0.5, 0.5, 1.5],
# centred y = [-3, -2, -1, 6]; cov sum = 14, sum x^2 = 5, sum y^2 = 50 -> r = 14 / sqrt(250).
X, Y = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 10.0]
PEARSON, SPEARMAN = 14 / math.sqrt(250), 1.0

HUB_KEYS = {
    "sst2": {"accuracy"},
    "rte": {"accuracy"},
    "qnli": {"accuracy"},
    "wnli": {"accuracy"},
    "mnli": {"accuracy"},
    "mnli_matched": {"accuracy"},
    "mnli_mismatched": {"accuracy"},
    "hans": {"accuracy"},
    "mrpc": {"accuracy", "f1"},
    "qqp": {"accuracy", "f1"},
    "cola": {"matthews_correlation"},
    "stsb": {"pearson", "spearmanr"},
}


def test_plain_function_known_values() -> None:
    assert glue_metric("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(MCC)}
    assert glue_metric("mrpc", PREDS, REFS) == {"accuracy": pytest.approx(ACC), "f1": pytest.approx(F1)}
    assert glue_metric("qqp", np.array(PREDS), np.array(REFS)) == {"accuracy": pytest.approx(ACC), "f1": F1}
    assert glue_metric("rte", PREDS, REFS) == {"accuracy": pytest.approx(ACC)}
    assert glue_metric("mnli", [0, 1, 2, 2], [0, 1, 2, 1]) == {"accuracy": 0.75}
    assert glue_metric("stsb", X, Y) == {"pearson": pytest.approx(PEARSON), "spearmanr": pytest.approx(SPEARMAN)}
    for value in glue_metric("mrpc", PREDS, REFS).values():
        assert type(value) is float


def test_config_keys_match_hub() -> None:
    assert set(METRIC_CONFIGS) == set(HUB_KEYS)
    for config, keys in HUB_KEYS.items():
        preds, refs = (X, Y) if config == "stsb" else (PREDS, REFS)
        assert set(glue_metric(config, preds, refs)) == keys
        assert set(METRIC_CONFIGS[config]) == keys


def test_config_aliases_and_errors() -> None:
    assert metric_config("SST-2") == "sst2" and metric_config("sts-b") == "stsb"
    assert metric_config("mnli-mm") == "mnli_mismatched"
    with pytest.raises(ValueError, match="Unknown GLUE metric config 'squad'.*sst2"):
        glue_metric("squad", [0], [0])
    with pytest.raises(ValueError, match="differ in length"):
        glue_metric("sst2", [0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        glue_metric("sst2", [], [])
    with pytest.raises(ValueError, match="argmax"):
        glue_metric("sst2", np.zeros((3, 2)), [0, 1, 0])


@pytest.mark.parametrize("config", sorted(HUB_KEYS))
def test_evaluate_module_same_as_function(config: str) -> None:
    preds, refs = (X, Y) if config == "stsb" else (PREDS, REFS)
    metric = load_glue_metric(config, keep_in_memory=True)
    assert metric.config_name == config
    result = metric.compute(predictions=preds, references=refs)
    assert set(result) == HUB_KEYS[config]
    assert result == pytest.approx(glue_metric(config, preds, refs))


def test_evaluate_module_add_batch() -> None:
    metric = load_glue_metric("cola", keep_in_memory=True)
    for start in range(0, len(REFS), 3):
        metric.add_batch(predictions=PREDS[start : start + 3], references=REFS[start : start + 3])
    assert metric.compute() == {"matthews_correlation": pytest.approx(MCC)}

    metric = load_glue_metric("stsb")  # default: on-disk cache, as Trainer uses it
    metric.add_batch(predictions=np.array(X[:2]), references=np.array(Y[:2]))
    metric.add(prediction=X[2], reference=Y[2])
    metric.add_batch(predictions=X[3:], references=Y[3:])
    batched = metric.compute()
    assert batched == pytest.approx({"pearson": PEARSON, "spearmanr": SPEARMAN})
    assert batched == pytest.approx(load_glue_metric("stsb").compute(predictions=X, references=Y))


def test_evaluate_module_unknown_config() -> None:
    with pytest.raises(ValueError, match="Unknown GLUE metric config"):
        load_glue_metric("squad")
    import evaluate

    with pytest.raises(ValueError, match="Unknown GLUE metric config 'squad'"):
        evaluate.load(str(METRIC_SCRIPT_DIR), config_name="squad")


def test_loads_offline_by_directory_path() -> None:
    """evaluate.load(<dir>, config_name=task) works with the Hub switched off (fresh process, env set at import)."""
    code = (
        "import evaluate, evaluate.config as c, huggingface_hub.constants as h;"
        "assert c.HF_EVALUATE_OFFLINE and h.HF_HUB_OFFLINE;"
        f"m = evaluate.load({str(METRIC_SCRIPT_DIR)!r}, config_name='mrpc');"
        "print(m.compute(predictions=[0, 1, 1], references=[0, 1, 0]))"
    )
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    # A dead proxy makes any attempted download fail instead of silently succeeding where a network exists.
    dead_proxy = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env = {**os.environ, **offline, **dead_proxy}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}"
