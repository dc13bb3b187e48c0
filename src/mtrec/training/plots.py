"""Plots of a run: learning curves and per-task ROC curves (PNG, written atomically).

Every plot of mtrec numbers epochs as the training log, ``history.jsonl`` and ``metrics.json``
(``best_epoch``) do: from 0, the first epoch trained; ticks are whole numbers (:func:`epoch_axis`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from mtrec.io import atomic_write
from mtrec.metrics import auc, task_score


def epoch_axis(ax: Any) -> None:
    """Label ``ax``'s x axis as epochs (counted from 0), whole numbers only."""
    ax.set_xlabel("epoch (from 0)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically) and free it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_learning_curves(history: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    """Write :func:`learning_curves_figure` to ``path``."""
    save_figure(learning_curves_figure(history, tasks), path)


def learning_curves_figure(history: list[dict[str, Any]], tasks: list[str]) -> Figure:
    """Train loss and the validation score per task (AUC of a binary task, R² of a regression task), by
    epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for task in tasks:
        ax_loss.plot(epochs, [row["train_loss"][task] for row in history], marker="o", label=task)
        ax_auc.plot(epochs, [task_score(row["valid"][task]) for row in history], marker="o", label=task)
    ax_loss.set(title="train loss per task", ylabel="loss")
    ax_auc.set(title="validation score per task", ylabel="AUC (binary) / R² (regression)")
    for ax in (ax_loss, ax_auc):
        epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_roc(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], masks: dict[str, np.ndarray], path: Path
) -> None:
    """Write :func:`roc_figure` to ``path``."""
    save_figure(roc_figure(probs, labels, masks), path)


def roc_figure(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> Figure:
    """Test ROC curve per task with its AUC in the legend, over each task's observed rows (rows without a
    finite score left out: test data with NaN features, trained past with ``train.on_nonfinite: skip``)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    undefined = []
    for task, p in probs.items():
        keep = (masks[task] > 0) & np.isfinite(p)
        if len(np.unique(labels[task][keep])) < 2:
            undefined.append(task)
            continue
        fpr, tpr, _ = roc_curve(labels[task][keep], p[keep])
        ax.plot(fpr, tpr, label=f"{task} (AUC {auc(labels[task][keep], p[keep]):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    note = f" ({', '.join(undefined)}: one class only)" if undefined else ""
    ax.set(title=f"test ROC{note}", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend()
    return fig


def plot_gradient_conflict(steps: np.ndarray, cosines: dict[str, np.ndarray], path: Path) -> None:
    """The cosine between two tasks' gradients on the shared parameters, per task pair, by step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for pair, values in cosines.items():
        ax.plot(steps, values, marker="." if len(values) < 200 else None, label=pair)
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(title="gradient conflict: cosine between task gradients on the shared parameters\n"
                 "(below 0: the tasks pull the shared parameters apart)",
           xlabel="training step", ylabel="cosine", ylim=(-1.05, 1.05))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
