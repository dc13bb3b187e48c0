"""Calibration of binary tasks: reliability diagram, expected calibration error, mean predicted rate.

Predictions are put into :data:`BINS` equal-width probability bins; ECE is the row-weighted mean over
bins of ``|mean predicted probability - observed positive rate|`` (0: perfectly calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from mtrec.inspect.plots import save

BINS = 10


@dataclass
class Calibration:
    """One task: ECE, mean predicted probability and observed rate overall and per bin, rows per bin."""

    ece: float
    predicted_rate: float
    observed_rate: float
    bin_predicted: list[float]
    bin_observed: list[float]
    bin_rows: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"ece": self.ece, "predicted_rate": self.predicted_rate, "observed_rate": self.observed_rate,
                "bins": {"predicted": self.bin_predicted, "observed": self.bin_observed, "rows": self.bin_rows}}


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Calibration:
    """Calibration of probabilities ``[n]`` against 0/1 labels ``[n]`` (bins without rows hold NaN)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        raise ValueError("calibration needs at least one row")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # [n], p = 1 in the last bin
    rows = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, weights=p, minlength=bins) / rows
        observed = np.bincount(index, weights=y, minlength=bins) / rows
    filled = rows > 0
    ece = float(np.sum(rows[filled] * np.abs(predicted[filled] - observed[filled])) / p.size)
    return Calibration(ece, float(p.mean()), float(y.mean()), predicted.tolist(), observed.tolist(), rows.tolist())


def plot_reliability(tasks: dict[str, Calibration], path: Path) -> None:
    """One panel per task: observed rate against mean predicted probability per bin, the diagonal, and
    the share of rows in each bin."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 4.4), squeeze=False)
    for ax, (task, c) in zip(axes[0], tasks.items(), strict=True):
        centres = (np.arange(len(c.bin_rows)) + 0.5) / len(c.bin_rows)
        share = np.asarray(c.bin_rows) / max(sum(c.bin_rows), 1)
        ax.bar(centres, share, width=1 / len(c.bin_rows), color="lightgrey", edgecolor="grey",
               label="share of rows in the bin")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="perfect calibration")
        ax.plot(c.bin_predicted, c.bin_observed, marker="o", label="model")
        ax.set(title=f"{task}: ECE {c.ece:.4f}\npredicted rate {c.predicted_rate:.4f}, observed {c.observed_rate:.4f}",
               xlabel="mean predicted probability (bin)", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    save(fig, path)
