# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The container of per-scalar Fisher scores that :func:`lntune.fisher.fisher_scores` returns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


class FisherScores(Mapping):
    """Diagonal Fisher per norm: ``name -> {"weight": fp32 [H], "bias": fp32 [H]}`` (no ``bias`` if the norm has none).

    Names are those :func:`lntune.norms.find_norms` reports for the scored model, in its module order. ``num_samples``
    is how many samples the means are over, ``roles`` maps each name to its role, ``kind`` and ``task`` say how the
    log-likelihood was formed.
    """

    def __init__(
        self,
        scores: dict[str, dict[str, torch.Tensor]],
        num_samples: int,
        roles: dict[str, str],
        kind: str = "empirical",
        task: str | None = None,
    ) -> None:
        self._scores = scores
        self.num_samples = num_samples
        self.roles = roles
        self.kind = kind
        self.task = task

    def __getitem__(self, name: str) -> dict[str, torch.Tensor]:
        return self._scores[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def num_scalars(self) -> int:
        """Number of scored scalars (all gains and biases of all norms)."""
        return sum(t.numel() for params in self._scores.values() for t in params.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists of floats), e.g. for ``json.dump``."""
        return {
            "num_samples": self.num_samples,
            "kind": self.kind,
            "task": self.task,
            "roles": dict(self.roles),
            "scores": {n: {k: t.tolist() for k, t in p.items()} for n, p in self._scores.items()},
        }

    def __repr__(self) -> str:
        return (
            f"FisherScores({len(self)} norms, {self.num_scalars} scalars, num_samples={self.num_samples}, "
            f"kind={self.kind!r}, task={self.task!r})"
        )


__all__ = [
    "FisherScores",
]
