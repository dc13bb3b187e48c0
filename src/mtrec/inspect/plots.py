"""The report's figures: annotated heatmaps and line plots, written as PNG atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mtrec.io import atomic_write

ANNOTATE_CELLS = 400  # heatmaps with at most this many cells print each cell's value


def save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def heatmap(
    values: np.ndarray, rows: list[str], cols: list[str], path: Path, *, title: str, xlabel: str, ylabel: str,
    colorbar: str, fmt: str = ".2f", cmap: str = "viridis", center: float | None = None,
    spread: np.ndarray | None = None, floor: float | None = None,
) -> None:
    """``values`` ``[len(rows), len(cols)]`` as a labelled heatmap with a colour bar and, when small
    enough, each cell's value (``± spread`` when given, same shape); ``center``: a diverging colour scale
    symmetric around this value; ``floor``: the colour scale's lowest value (default: the smallest value)."""
    height, width = values.shape
    cell_width = 0.55 if spread is None else 1.0
    fig, ax = plt.subplots(figsize=(min(2.5 + cell_width * width, 18), min(1.6 + 0.45 * height, 14)))
    finite = values[np.isfinite(values)]
    low, high = floor, None
    if center is not None and finite.size:
        reach = float(np.max(np.abs(finite - center))) or 1.0
        low, high = center - reach, center + reach
    colours = matplotlib.colormaps[cmap].with_extremes(bad="whitesmoke")  # NaN cells: nothing to show
    image = ax.imshow(values, cmap=colours, aspect="auto", vmin=low, vmax=high)
    ax.set_xticks(range(width), cols, rotation=45 if max(map(len, cols), default=0) > 3 else 0, ha="right")
    ax.set_yticks(range(height), rows)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.03)
    if values.size <= ANNOTATE_CELLS:
        low, high = image.get_clim()
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                dark = center is None and (v - low) / ((high - low) or 1.0) < 0.5  # viridis is dark below
                text = format(v, fmt) + ("" if spread is None else f"±{format(spread[i, j], fmt)}")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    save(fig, path)
