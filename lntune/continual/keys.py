# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Initial keys of a new task: unit vectors orthogonal to every earlier key (the official ``key_init=orthogonal``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["orthogonal_init"]


def orthogonal_init(
    count: int, dim: int, existing: Optional[torch.Tensor], generator: torch.Generator
) -> torch.Tensor:
    """``count`` unit vectors orthogonal to each other and to the rows of ``existing`` (as far as ``dim`` allows).

    Gram-Schmidt (applied twice, for round-off) on Gaussian draws; once ``dim`` directions are used up the remaining
    vectors are plain random unit vectors, which is the best one can do.
    """
    basis = [] if existing is None or existing.numel() == 0 else list(F.normalize(existing.detach().float(), dim=-1))
    # the earlier keys need not be orthogonal any more (they were trained): orthonormalise them first
    ortho: list[torch.Tensor] = []
    for v in basis:
        for _ in range(2):
            for b in ortho:
                v = v - (v @ b) * b
        if v.norm() > 1e-6:
            ortho.append(v / v.norm())
    out = []
    for _ in range(count):
        v = torch.randn(dim, generator=generator)
        if len(ortho) < dim:
            for _ in range(2):
                for b in ortho:
                    v = v - (v @ b) * b
        v = v / v.norm()
        out.append(v)
        if len(ortho) < dim:
            ortho.append(v)
    return torch.stack(out)
