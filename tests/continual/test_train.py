# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Training stages, baselines, query caching and exact resume, on tiny random backbones and synthetic data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf
from torch.utils.data import Dataset

from lntune.continual import (
    METHODS,
    ContinualConfig,
    LNBank,
    RunContext,
    SinglePassLNBank,
    TaskStream,
    TextSource,
    make_class_incremental_split,
    run_methods,
    text_stream,
)
from lntune.continual.stages import learn_keys, rectify_classifier, refine_layer_keys, train_task_lns

from ..models import MODELS, TINY_SIZES, minilm_dir


class _Images(Dataset):
    """Class-dependent random images: a fixed pattern per class plus noise."""

    def __init__(self, labels: np.ndarray, seed: int) -> None:
        g = torch.Generator().manual_seed(0)
        patterns = torch.randn(int(labels.max()) + 1, 3, 32, 32, generator=g)
        noise = torch.randn(len(labels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        self.x, self.labels = patterns[labels] + 0.5 * noise, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i], int(self.labels[i])


def _stack(xs):
    return {"pixel_values": torch.stack(xs)}


def synthetic_stream(num_classes: int = 4, num_tasks: int = 2, n_train: int = 4, n_test: int = 3) -> TaskStream:
    split = make_class_incremental_split(num_classes, num_tasks=num_tasks, seed=0)
    y_train = np.repeat(np.arange(num_classes), n_train)
    y_test = np.repeat(np.arange(num_classes), n_test)
    return TaskStream(
        split=split,
        train=_Images(y_train, seed=1),
        test=_Images(y_test, seed=2),
        train_labels=split.to_incremental_labels(y_train),
        test_labels=split.to_incremental_labels(y_test),
        collate=_stack,
    )


CONFIG = dict(epochs=1, batch_size=4, key_epochs=2, rectify_epochs=2, eval_batch_size=8, lr=0.01)


def make_ctx(stream: TaskStream, tmp_path=None, **overrides) -> RunContext:
    encoder = MODELS["vit"].build()
    return RunContext(
        stream=stream,
        make_encoder=lambda: copy.deepcopy(encoder),
        config=ContinualConfig(**{**CONFIG, **overrides.pop("config", {})}),
        checkpoint_root=None if tmp_path is None else tmp_path / "checkpoints",
        log=lambda msg: None,
        progress=False,
        **overrides,
    )


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# ---------------------------------------------------------------------------------------------------------- stages
def test_stages_touch_only_what_they_train():
    ctx = make_ctx(synthetic_stream())
    bank = LNBank(ctx.make_encoder(), num_classes=4)
    classes = ctx.stream.task_classes(0)
    bank.add_task(classes)
    g = torch.Generator().manual_seed(0)

    before = bank.state_tensors()
    sim_before = -float(bank.key_loss(ctx.cache.get("train", ctx.stream.indices("train", 0)), 0))
    sim_after = learn_keys(bank, 0, ctx, g)
    assert _changed(before, bank.state_tensors()) == {"keys.0"}
    assert sim_after > sim_before

    before = bank.state_tensors()
    train_task_lns(bank, 0, ctx, g, classes, aux_head=True)
    after = bank.state_tensors()
    changed = _changed(before, after)
    assert changed == {k for k in before if k.startswith("adapters.task_0.")} | {
        "aux_classifier.weight",
        "aux_classifier.bias",
    }
    others = [c for c in range(4) if c not in classes]  # head rows of other tasks' classes stay put
    assert torch.equal(before["aux_classifier.weight"][others], after["aux_classifier.weight"][others])

    before = bank.state_tensors()
    rectify_classifier(bank, 0, ctx, g)
    assert _changed(before, bank.state_tensors()) == {"classifier.weight", "classifier.bias"}
    assert not any(p.requires_grad for p in bank.parameters()), "every stage must leave the bank frozen"


def test_single_pass_stage1_trains_its_layer_keys():
    ctx = make_ctx(synthetic_stream())
    bank = SinglePassLNBank(ctx.make_encoder(), num_classes=4)
    bank.add_task(ctx.stream.task_classes(0))
    before = bank.state_tensors()
    train_task_lns(bank, 0, ctx, torch.Generator().manual_seed(0), ctx.stream.task_classes(0), aux_head=True)
    changed = _changed(before, bank.state_tensors())
    assert {k for k in before if k.startswith("layer_keys.0.")} <= changed
    assert "classifier.weight" not in changed


def test_refining_layer_keys_touches_only_that_task_and_raises_similarity():
    ctx = make_ctx(synthetic_stream(), config={"layer_key_epochs": 5})
    bank = SinglePassLNBank(ctx.make_encoder(), num_classes=4)
    for t in range(2):
        bank.add_task(ctx.stream.task_classes(t))
    rows = ctx.stream.indices("train", 1)
    tokens = bank.layer_inputs(1, **ctx.stream.collate([ctx.stream.train[int(r)][0] for r in rows]))
    assert len(tokens) == len(bank.lntune_layers())  # every ViT norm sees a (batch, tokens, dim) input
    sim_before = -float(bank.layer_key_loss(1, tokens))
    before = bank.state_tensors()
    sim_after = refine_layer_keys(bank, 1, ctx, torch.Generator().manual_seed(0))
    assert _changed(before, bank.state_tensors()) == {k for k in before if k.startswith("layer_keys.1.")}
    assert sim_after > sim_before + 0.1


# ---------------------------------------------------------------------------------------------------------- runs
def _results(ctx: RunContext, methods) -> dict:
    return {m: r.to_dict() for m, r in run_methods(ctx, methods).items()}


def test_every_method_runs_and_reports(tmp_path):
    ctx = make_ctx(synthetic_stream(), tmp_path)
    ctx.config.layer_key_epochs = 2
    results = _results(ctx, list(METHODS))
    for m in ("ln-bank", "ln-bank-1pass", "nmc", "seq-ln"):
        r = results[m]
        assert len(r["acc_matrix"]) == 2 and 0 <= r["final_avg_acc"] <= 1 and "forgetting" in r
    assert len(results["ln-bank"]["task_id_acc"]) == 2 and results["ln-bank"]["task_id_acc"][0] == 1.0
    assert results["seq-ln"]["task_id_acc"] is None
    assert results["joint-ln"]["upper_bound"] and len(results["joint-ln"]["acc_final_per_task"]) == 2
    assert 0 <= results["ln-bank"]["final_acc_oracle_task"] <= 1
    # queries are computed once per sample and shared by every method
    assert ctx.cache.computed == len(ctx.stream.train) + len(ctx.stream.test)


def test_query_cache_off_recomputes():
    ctx = make_ctx(synthetic_stream(), cache_queries=False)
    run_methods(ctx, ["ln-bank"])
    assert ctx.cache.computed > 2 * (len(ctx.stream.train) + len(ctx.stream.test))


def test_resume_after_a_kill_ends_exactly_like_an_uninterrupted_run(tmp_path):
    methods = ["ln-bank", "ln-bank-1pass", "seq-ln", "joint-ln"]
    stream = synthetic_stream(num_classes=6, num_tasks=3, n_train=3, n_test=2)
    reference = _results(make_ctx(stream, tmp_path / "a"), methods)

    class Killed(Exception):
        pass

    def kill(method: str, t: int) -> None:
        if method == "ln-bank-1pass" and t == 1:
            raise Killed

    with pytest.raises(Killed):
        _results(make_ctx(stream, tmp_path / "b", after_task=kill), methods)
    resumed = _results(make_ctx(stream, tmp_path / "b", resume=True), methods)
    assert resumed == reference


def test_text_bank_on_tiny_bert():
    tokenizer = tf.AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    bert = tf.BertModel(tf.BertConfig(hidden_size=32, vocab_size=tokenizer.vocab_size, **TINY_SIZES)).eval()
    words = ["alarm", "weather", "music", "bank", "travel", "food"]
    texts = [f"please {w} now {i}" for w in words for i in range(3)]
    labels = np.repeat(np.arange(6), 3)
    source = TextSource(texts=texts, labels=labels, class_names=tuple(words))
    split = make_class_incremental_split(6, num_tasks=3, seed=0)
    stream = text_stream(split, source, source, tokenizer, max_length=16)
    ctx = RunContext(
        stream=stream,
        make_encoder=lambda: copy.deepcopy(bert),
        config=ContinualConfig(**CONFIG),
        log=lambda msg: None,
        progress=False,
    )
    results = _results(ctx, ["ln-bank", "ln-bank-1pass", "nmc"])
    assert all(len(r["acc_matrix"]) == 3 for r in results.values())


# ---------------------------------------------------------------------------------------------------------- errors
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="key_mode must be one of"):
        ContinualConfig(key_mode="layer")
    with pytest.raises(ValueError, match="rectify_mask"):
        ContinualConfig(rectify_mask="all")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ContinualConfig(batch_size=0)
    assert ContinualConfig(lr=0.01, batch_size=128, lr_reference_batch=256).stage1_lr == pytest.approx(0.005)


def test_stream_rejects_a_task_without_test_samples():
    split = make_class_incremental_split(4, num_tasks=2, seed=0)
    y_train, y_test = np.repeat(np.arange(4), 2), np.asarray(list(split.tasks[0]) * 2)  # no class of task 1
    train, test = _Images(y_train, 1), _Images(y_test, 2)
    with pytest.raises(ValueError, match=r"Task\(s\) \[1\] have no test samples"):
        TaskStream(
            split, train, test, split.to_incremental_labels(y_train), split.to_incremental_labels(y_test), _stack
        )


def test_unknown_method():
    with pytest.raises(ValueError, match="Unknown method"):
        run_methods(make_ctx(synthetic_stream()), ["ewc"])
