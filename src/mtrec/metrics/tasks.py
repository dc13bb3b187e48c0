"""Every task's metrics on a split, and the one figure per task that plots and tables lead with."""

from __future__ import annotations

import math

import numpy as np

from mtrec.metrics.ranking import auc, gauc, logloss
from mtrec.metrics.values import value_metrics

BINARY_METRICS = ("auc", "gauc", "logloss")
VALUE_METRICS = ("gini", "spearman", "rmse", "mae", "r2")


def is_value_task(metrics: dict[str, float]) -> bool:
    """Whether a task's metrics (as :func:`evaluate_tasks` gives them) are a value task's."""
    return "auc" not in metrics


def task_score(metrics: dict[str, float]) -> float:
    """One task's higher-is-better figure: AUC for a binary task, R² for a value task."""
    return metrics["r2"] if is_value_task(metrics) else metrics["auc"]


def score_name(metrics: dict[str, float]) -> str:
    """The name of :func:`task_score`'s figure, as written in logs and plots."""
    return "R²" if is_value_task(metrics) else "AUC"


LABELS = {"auc": ("AUC", ".4f"), "gauc": ("GAUC", ".4f"), "logloss": ("logloss", ".4f"), "gini": ("Gini", ".4f"),
          "spearman": ("Spearman", ".4f"), "rmse": ("RMSE", ".4g"), "mae": ("MAE", ".4g"), "r2": ("R²", ".4f")}


def validation_loss(metrics: dict[str, float]) -> float:
    """A task's loss on a split, from what it predicts: the logloss of a binary task's probabilities, the
    mean squared error (RMSE²) of a value task's values in its label's units; NaN where undefined (a NaN
    read back from JSON is None)."""
    value = metrics["rmse"] ** 2 if is_value_task(metrics) and metrics["rmse"] is not None else metrics["logloss"]
    return math.nan if value is None else float(value)


def mean_selection_score(metrics: dict[str, dict[str, float]], first: dict[str, dict[str, float]]) -> float:
    """The higher-is-better score of ``train.select: mean`` for an epoch's validation metrics per task.

    All tasks binary: the mean AUC (tasks with an undefined AUC skipped). Otherwise AUC, R² or a loss of
    another task are not on one scale, so none of them is averaged: each task's :func:`validation_loss`
    is divided by its value at the first epoch (``first``), which puts every task at 1 there and counts a
    10 % lower loss the same for every task, and the score is minus the mean of these ratios (tasks whose
    loss is undefined, or was not positive at the first epoch, skipped). -inf if no task counts.
    """
    if not any(is_value_task(m) for m in metrics.values()):
        values = [m["auc"] for m in metrics.values() if not math.isnan(m["auc"])]
    else:
        ratios = [validation_loss(m) / validation_loss(first[t]) for t, m in metrics.items()
                  if validation_loss(first[t]) > 0]  # False for NaN
        values = [-r for r in ratios if not math.isnan(r)]
    return sum(values) / len(values) if values else -math.inf


def format_metrics(metrics: dict[str, float]) -> str:
    """A task's metrics as one line, those it has in the order of :data:`LABELS`: ``AUC 0.7412  logloss
    0.4301`` (binary), ``Gini 0.4102  Spearman 0.3120  RMSE 12.41  MAE 3.02  R² 0.0512`` (value; RMSE and
    MAE in the label's units)."""
    return "  ".join(f"{label} {metrics[key]:{spec}}" for key, (label, spec) in LABELS.items() if key in metrics)


def evaluate_tasks(
    probs: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    users: np.ndarray | None = None,
    regression: frozenset[str] = frozenset(),
) -> dict[str, dict[str, float]]:
    """Per task, over the task's counted rows (``masks`` > 0): AUC, logloss (and GAUC with ``users``) of a
    binary task's probabilities; RMSE, MAE, R², normalized Gini and Spearman correlation of a value task's
    (named in ``regression``) predicted values."""
    result: dict[str, dict[str, float]] = {}
    for task, p in probs.items():
        keep = masks[task] > 0
        y, s = labels[task][keep], p[keep]
        if task in regression:
            result[task] = {**value_metrics(y, s), "rows": float(keep.sum())}
            continue
        metrics = {"auc": auc(y, s), "logloss": logloss(y, s), "rows": float(keep.sum())}
        if users is not None:
            metrics["gauc"] = gauc(y, s, users[keep])
        result[task] = metrics
    return result
