# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Heatmap of a continual-learning accuracy matrix, written as a PNG.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it works headless and
does not disturb a caller's own plotting. The file is written atomically: a half-written PNG never replaces a good
one, even if the run is killed mid-save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lntune.continual.metrics import check_acc_matrix
from lntune.io import save_figure

__all__ = ["plot_accuracy_matrix"]


def plot_accuracy_matrix(acc: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write ``acc`` (T x T, ``acc[i][j]`` = accuracy on task j after task i) as an annotated heatmap PNG.

    Fractions in [0, 1] are shown as percentages; the upper triangle is left blank. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a = check_acc_matrix(acc)
    T = a.shape[0]
    finite = a[np.isfinite(a)]
    as_fraction = bool(np.all((finite >= 0) & (finite <= 1)))
    shown = a * 100 if as_fraction else a
    vmax = 100.0 if as_fraction or np.nanmax(shown) <= 100 else float(np.nanmax(shown))
    vmin = min(0.0, float(np.nanmin(shown)))

    side = min(max(3.5, 0.55 * T + 2.0), 20.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(shown)
    cmap = _cmap()
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)" if as_fraction else "accuracy")

    if T <= 30:
        fontsize = max(5.0, min(10.0, 120.0 / T))
        mid = (vmin + vmax) / 2
        for i in range(T):
            for j in range(i + 1):
                v = shown[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.1f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if v < mid else "black",
                )
    ticks = np.arange(T)
    step = max(1, T // 20)
    ax.set_xticks(ticks[::step])
    ax.set_yticks(ticks[::step])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    if title:
        ax.set_title(title)
    fig.tight_layout()

    save_figure(fig, path, format="png")  # a plain Figure (no pyplot state): nothing to close
    return path


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="white")  # bad = masked = the blank upper triangle
