# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""A training-free classifier on frozen features that stores no samples: class means and one shared covariance.

:class:`ClassStatistics` keeps, per class, the number of samples and their mean, and one pooled within-class scatter
matrix shared by all classes (the statistics of LDA, and of FeCAM / SLCA-style Gaussian classifiers with a shared
covariance). It is streamed: :meth:`~ClassStatistics.update` takes any batch of any classes, in any order, and the
statistics equal those of one pass over all the data (Chan et al.'s pairwise update of means and scatter, in float64).
In class-incremental learning each task adds its classes, and nothing of earlier tasks is kept but these numbers.

Prediction is linear discriminant analysis with equal priors (the nearest class mean in the Mahalanobis metric of the
shared covariance): ``g_c(x) = mu_c' P x - mu_c' P mu_c / 2`` with ``P`` the inverse of the *shrunk* covariance
``(1 - a) S + a (tr(S) / d) I``. With few samples per task ``S`` is badly conditioned, or singular (rank at most
``N - C`` for ``N`` samples of ``C`` classes, below the feature size ``d`` early in a run), so it is always shrunk:
by default with the Oracle Approximating Shrinkage coefficient ``a`` (Chen et al. 2010, as scikit-learn's ``OAS``),
which depends only on ``S``, hence is exact and streamable too; or with a fixed ``a``. A fixed ``a`` that leaves the
matrix singular falls back to OAS, and a covariance of zero (one sample per class) to the identity; both are logged.

The bank's router (``LNBank(router="lda")``) sends a sample to the task of the class this classifier predicts on the
frozen query; :meth:`~ClassStatistics.task_scores` gives each task the best discriminant among its classes.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

__all__ = ["ClassStatistics"]

logger = logging.getLogger(__name__)


def oas_shrinkage(cov: torch.Tensor, n: int) -> float:
    """The Oracle Approximating Shrinkage coefficient of the empirical covariance `cov` of `n` samples toward
    `tr(cov) / d * I` (Chen et al. 2010; scikit-learn's `OAS` formula), in [0, 1]."""
    d = cov.shape[0]
    mu = float(torch.trace(cov)) / d
    alpha = float((cov**2).mean())
    den = (n + 1) * (alpha - mu**2 / d)
    return 1.0 if den <= 0 else min((alpha + mu**2) / den, 1.0)


class ClassStatistics(nn.Module):
    """
    Running class means and a shared within-class covariance; predicts by shrunk LDA (see the module docstring).

    Args:
        num_classes (`int`): classes `0..num_classes-1` the statistics can hold (in incremental labels).
        dim (`int`): feature size.
        shrinkage (`Optional[float]`): `None` (default): the OAS coefficient, recomputed from the data at each use;
            a float in [0, 1]: that fixed coefficient (0 = plain LDA), replaced by OAS if it leaves the covariance
            singular.

    The statistics are float64 buffers (`count`, `mean`, `scatter`), so they move with `.to()` and a bank saves
    them with its other tensors.

    Example:

        ```py
        >>> stats = ClassStatistics(num_classes=10, dim=192)
        >>> stats.update(features_of_task_0, labels_of_task_0)  # any batches, any order
        >>> stats.predict(test_features)  # argmax of the discriminants over the classes seen so far
        ```
    """

    def __init__(self, num_classes: int, dim: int, shrinkage: Optional[float] = None) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be None (OAS) or lie in [0, 1], got {shrinkage!r}.")
        self.num_classes, self.dim, self.shrinkage = num_classes, dim, shrinkage
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("scatter", torch.zeros(dim, dim, dtype=torch.float64))
        self.last_shrinkage: Optional[float] = None  # the coefficient of the last prediction
        self._logged_at = -1  # sample count of the last fallback log line (one line per state, not per batch)

    # ------------------------------------------------------------------ statistics
    @property
    def classes(self) -> torch.Tensor:
        """The classes with at least one sample, in increasing order."""
        return torch.nonzero(self.count > 0).flatten()

    @property
    def num_samples(self) -> int:
        return int(self.count.sum())

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: `features` `(n, dim)`, `labels` `(n,)` (classes in `0..num_classes-1`)."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {tuple(features.shape)}.")
        labels = torch.as_tensor(labels).flatten().to(self.count.device, torch.long)
        if labels.numel() != features.shape[0]:
            raise ValueError(f"Got {features.shape[0]} feature rows but {labels.numel()} labels.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = sorted({int(y) for y in labels.tolist() if not 0 <= y < self.num_classes})
            raise ValueError(f"Labels {bad[:5]} are outside [0, {self.num_classes}) (num_classes={self.num_classes}).")
        x = features.detach().to(self.mean.device, torch.float64)
        for c in labels.unique().tolist():
            xc = x[labels == c]
            n_b, mean_b = xc.shape[0], xc.mean(0)
            centred = xc - mean_b
            n_a = float(self.count[c])
            delta = mean_b - self.mean[c]
            n = n_a + n_b
            # Chan et al.: scatter of the union = both scatters + the between-part of the two means
            self.scatter += centred.T @ centred + torch.outer(delta, delta) * (n_a * n_b / n)
            self.mean[c] += delta * (n_b / n)
            self.count[c] = n

    def covariance(self) -> torch.Tensor:
        """The pooled within-class covariance `scatter / (N - C)` (`N` samples, `C` classes; `N` if `N == C`)."""
        self._check_fitted()
        dof = self.num_samples - len(self.classes)
        return self.scatter / (dof if dof > 0 else self.num_samples)

    def shrunk_covariance(self) -> tuple[torch.Tensor, float]:
        """`(covariance shrunk toward its mean variance, the coefficient used)`; logs when it had to fall back."""
        cov, d = self.covariance(), self.dim
        trace = float(torch.trace(cov))
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        quiet, self._logged_at = self._logged_at == self.num_samples, self.num_samples
        if trace <= 0:
            if not quiet:
                logger.info("ClassStatistics: the within-class covariance is zero (one sample per class?); using I.")
            return eye, 1.0
        a = oas_shrinkage(cov, self.num_samples) if self.shrinkage is None else self.shrinkage
        shrunk = (1 - a) * cov + a * (trace / d) * eye
        if a == 0 and torch.linalg.matrix_rank(cov) < d:
            a = oas_shrinkage(cov, self.num_samples)
            if not quiet:
                logger.info(
                    f"ClassStatistics: the covariance of {self.num_samples} samples in {len(self.classes)} classes is "
                    f"singular (rank {int(torch.linalg.matrix_rank(cov))} < {d}); shrunk with the OAS coefficient {a:.4f}."
                )
            shrunk = (1 - a) * cov + a * (trace / d) * eye
        return shrunk, a

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not bool((self.count > 0).any()):
            raise ValueError(
                "ClassStatistics has no class yet: call update() with the features and labels of at least one task "
                "before predicting."
            )

    def _solve(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(seen classes, discriminant weights `(dim, C)`, biases `(C,)`); recomputed at each call (a Cholesky of a
        `dim x dim` matrix), so loading or moving the buffers never leaves a stale solution behind."""
        cov, self.last_shrinkage = self.shrunk_covariance()
        classes = self.classes
        means = self.mean[classes]
        weights = torch.cholesky_solve(means.T, torch.linalg.cholesky(cov))
        return classes, weights, -0.5 * (means * weights.T).sum(-1)

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(discriminants (n, C), classes (C,))` of the classes seen so far (higher = more likely)."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {tuple(features.shape)}.")
        classes, weights, bias = self._solve()
        x = features.detach().to(weights.device, torch.float64)
        return x @ weights + bias, classes

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The class (incremental label) with the highest discriminant, for each row of `features`."""
        scores, classes = self.scores(features)
        return classes[scores.argmax(-1)]

    def task_scores(self, features: torch.Tensor, class_task: torch.Tensor, num_tasks: int) -> torch.Tensor:
        """`(n, num_tasks)`: for each task, the best discriminant among its classes (`class_task[c]` is the task of
        class `c`; classes of later tasks are ignored, tasks without a fitted class score `-inf`)."""
        scores, classes = self.scores(features)
        owner = class_task.to(classes.device)[classes]
        out = torch.full((scores.shape[0], num_tasks), float("-inf"), dtype=scores.dtype, device=scores.device)
        keep = (owner >= 0) & (owner < num_tasks)
        index = owner[keep].unsqueeze(0).expand(scores.shape[0], -1)
        return out.scatter_reduce(1, index, scores[:, keep], reduce="amax", include_self=True)
