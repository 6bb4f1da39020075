# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""ClassStatistics (streamed LDA with shrinkage), the bank's LDA router and top-k voting, the `lda` recipe method."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.covariance import OAS

from lntune.continual import LNBank, SinglePassLNBank, load_bank, save_bank
from lntune.continual.router import ClassStatistics, oas_shrinkage

from ..models import MODELS
from .helpers import CIFAR10_DIR, load_recipe, two_task_lda_bank


def _data(n_per_class: int = 30, dim: int = 6, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return means[labels] + torch.randn(len(labels), dim, generator=g), labels


def _batch_statistics(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the pooled within-class covariance, computed in one go (the reference)."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    scatter = sum((x[y == c] - m).T @ (x[y == c] - m) for c, m in zip(classes, means))
    return means, scatter / (len(x) - len(classes))


# ---------------------------------------------------------------------------------------------------------- statistics
def test_streamed_statistics_equal_the_batch_computation():
    x, y = _data()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    streamed = ClassStatistics(num_classes=5, dim=6)
    for chunk in torch.split(perm, 7):  # uneven batches mixing classes, every class spread over several batches
        streamed.update(x[chunk], y[chunk])
    once = ClassStatistics(num_classes=5, dim=6)
    once.update(x, y)
    means, cov = _batch_statistics(x.double().numpy(), y.numpy())
    for stats in (streamed, once):
        assert stats.classes.tolist() == [0, 1, 2, 3] and stats.num_samples == 120
        np.testing.assert_allclose(stats.mean[:4].numpy(), means, rtol=0, atol=1e-12)
        np.testing.assert_allclose(stats.covariance().numpy(), cov, rtol=0, atol=1e-12)
    assert torch.equal(streamed.predict(x), once.predict(x))


def test_task_by_task_equals_all_at_once_and_lda_beats_euclidean_means_on_a_shared_anisotropic_covariance():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([10.0, 0.3, 1.0, 1.0])  # the class means differ along the low-variance direction
    means = torch.tensor([[0.0, 0.0, 0, 0], [0.0, 1.0, 0, 0], [3.0, -1.0, 0, 0], [-3.0, 2.0, 0, 0]])
    y = torch.arange(4).repeat_interleave(200)
    x = means[y] + torch.randn(len(y), 4, generator=g) * scale
    tasks = ClassStatistics(num_classes=4, dim=4, shrinkage=0.0)
    for t in range(2):  # two tasks of two classes
        tasks.update(x[y // 2 == t], y[y // 2 == t])
    once = ClassStatistics(num_classes=4, dim=4, shrinkage=0.0)
    once.update(x, y)
    assert torch.equal(tasks.predict(x), once.predict(x))
    lda_acc = float((once.predict(x) == y).float().mean())
    nearest_mean = torch.cdist(x.double(), once.mean).argmin(-1)
    assert lda_acc > float((nearest_mean == y).float().mean()) + 0.2


def test_oas_coefficient_matches_scikit_learn():
    x, _ = _data(n_per_class=10, dim=8, classes=1)
    centred = (x - x.mean(0)).double()
    cov = centred.T @ centred / len(x)
    assert oas_shrinkage(cov, len(x)) == pytest.approx(OAS(assume_centered=True).fit(centred.numpy()).shrinkage_)


def test_singular_covariance_is_shrunk_and_logged(caplog):
    x, y = _data(n_per_class=3, dim=20, classes=2)  # 6 samples, 2 classes: rank <= 4 < 20
    stats = ClassStatistics(num_classes=2, dim=20, shrinkage=0.0)
    stats.update(x, y)
    assert int(torch.linalg.matrix_rank(stats.covariance())) < 20
    with caplog.at_level(logging.INFO, logger="lntune.continual.router"):
        shrunk, a = stats.shrunk_covariance()
    assert "singular" in caplog.text and 0 < a <= 1
    assert torch.linalg.eigvalsh(shrunk).min() > 0
    assert (stats.predict(x) == y).all()
    default = ClassStatistics(num_classes=2, dim=20)  # OAS whatever the rank
    default.update(x, y)
    assert default.shrunk_covariance()[1] == pytest.approx(a)


def test_zero_covariance_falls_back_to_the_identity(caplog):
    stats = ClassStatistics(num_classes=3, dim=4)
    stats.update(torch.eye(3, 4), torch.arange(3))  # one sample per class
    with caplog.at_level(logging.INFO, logger="lntune.continual.router"):
        shrunk, a = stats.shrunk_covariance()
    assert torch.equal(shrunk, torch.eye(4, dtype=torch.float64)) and a == 1.0 and "zero" in caplog.text
    assert stats.predict(torch.eye(3, 4)).tolist() == [0, 1, 2]


def test_task_scores_take_the_best_class_of_each_task():
    x, y = _data()
    stats = ClassStatistics(num_classes=4, dim=6)
    stats.update(x, y)
    scores, classes = stats.scores(x[:5])
    class_task = torch.tensor([0, 0, 1, 1])
    per_task = stats.task_scores(x[:5], class_task, num_tasks=3)
    assert torch.equal(per_task[:, 0], scores[:, :2].max(-1).values)
    assert torch.equal(per_task[:, 1], scores[:, 2:].max(-1).values)
    assert torch.isinf(per_task[:, 2]).all()  # a task without fitted classes never wins


def test_errors_name_the_problem():
    stats = ClassStatistics(num_classes=3, dim=4)
    with pytest.raises(ValueError, match="no class yet: call update"):
        stats.predict(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        stats.update(torch.zeros(2, 4), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"features must be \(n, 4\)"):
        stats.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 feature rows but 3 labels"):
        stats.update(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="shrinkage must be None"):
        ClassStatistics(num_classes=3, dim=4, shrinkage=1.5)
    with pytest.raises(ValueError, match="router must be one of"):
        LNBank(MODELS["vit"].build(), num_classes=4, router="knn")
    with pytest.raises(ValueError, match="router must be 'keys'"):
        SinglePassLNBank(MODELS["vit"].build(), num_classes=4, router="lda")


# ---------------------------------------------------------------------------------------------------------- bank
def test_lda_router_picks_the_task_of_the_predicted_class_and_survives_a_checkpoint(tmp_path):
    bank, inputs = two_task_lda_bank()
    queries = bank.query(**inputs)
    expected = bank.class_task()[bank.statistics.predict(queries)]
    assert torch.equal(bank.select(queries), expected)
    save_bank(bank, tmp_path / "bank")
    assert json.loads((tmp_path / "bank" / "meta.json").read_text())["bank"]["router"] == "lda"
    loaded, _ = load_bank(tmp_path / "bank", MODELS["vit"].build())
    assert loaded.router == "lda" and torch.equal(loaded.statistics.mean, bank.statistics.mean)
    assert torch.equal(loaded.select(queries), expected)


def test_topk_voting_keeps_the_most_confident_candidate():
    bank, inputs = two_task_lda_bank()
    queries = bank.query(**inputs)
    f1, t1 = bank.infer(queries=queries, **inputs)
    f_one, t_one = bank.infer(queries=queries, topk=1, **inputs)
    assert torch.equal(t1, t_one) and torch.equal(f1, f_one)
    f2, t2 = bank.infer(queries=queries, topk=2, **inputs)  # both tasks are candidates: the head decides
    for t in range(2):  # each chosen row has its chosen task's features
        rows = t2 == t
        if rows.any():
            alone = bank.routed_features(torch.full((8,), t), **inputs)[rows]
            torch.testing.assert_close(f2[rows], alone)
    logits = torch.stack([bank.logits(bank.routed_features(torch.full((8,), t), **inputs), task_ids=torch.full((8,), t))
                          .max(-1).values for t in range(2)], dim=1)  # fmt: skip
    assert torch.equal(t2, logits.argmax(-1))


# ---------------------------------------------------------------------------------------------------------- recipe
@pytest.mark.slow
def test_recipe_runs_lda_and_the_lda_routed_bank_with_topk(tiny_vit, tmp_path):
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR10_DIR}")
    recipe = load_recipe()
    argv = [
        "--data", str(CIFAR10_DIR), "--model", str(tiny_vit), "--tasks", "2", "--max_train_per_class", "4",
        "--max_test_per_class", "2", "--epochs", "1", "--batch_size", "8", "--rectify_epochs", "1", "--no_progress",
        "--method", "lda,nmc,ln-bank", "--router", "lda", "--router_topk", "2", "--compare_key_modes", "0",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    metrics = recipe.main(argv)
    assert metrics["method"] == "lda" and sorted(metrics["methods"]) == ["lda", "ln-bank", "nmc"]
    lda, bank = metrics["methods"]["lda"], metrics["methods"]["ln-bank"]
    assert len(lda["acc_matrix"]) == 2 and len(lda["task_id_acc"]) == 2 and len(lda["shrinkage"]) == 2
    assert (bank["router"], bank["router_topk"]) == ("lda", 2) and bank["task_id_acc"][0] == 1.0
    assert metrics["config"]["continual"]["router"] == "lda"
    assert "| lda |" in (tmp_path / "out" / "results.md").read_text()
