"""Metrics of a value (regression) task's predictions, in the label's own units (NumPy).

- RMSE, MAE and R² (``1 - MSE / variance of the labels``): how close the values are.
- Normalized Gini: how well the predictions order the value. With ``r_i`` the rank of prediction ``i``
  (1 = lowest, ties averaged) over ``n`` rows and labels ``y`` summing to ``Y``, ``G(y, s) = 2 sum(r_i y_i)
  / (n Y) - (n + 1) / n`` (twice the area between the Lorenz curve of the value ordered by prediction and
  the diagonal); normalized by ``G(y, y)``, the Gini of a perfect ordering. 1 for a perfect order, 0 for a
  constant or random prediction; equals ``2 AUC - 1`` for 0/1 labels, up to the normalisation.
- Spearman correlation: the Pearson correlation of the ranks (ties averaged) of labels and predictions.

Each is NaN where it is undefined (no rows, constant labels, labels summing to 0).
"""

from __future__ import annotations

import numpy as np

from mtrec.metrics.ranking import tied_ranks


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks ``[n]`` of ``values`` ``[n]`` (ties averaged), in the values' own order."""
    order = np.argsort(values, kind="mergesort")
    result = np.empty(len(values), dtype=np.float64)
    result[order] = tied_ranks(values, order)
    return result


def _gini(labels: np.ndarray, scores: np.ndarray) -> float:
    n, total = len(labels), float(labels.sum())
    return 2.0 * float(ranks(scores) @ labels) / (n * total) - (n + 1) / n


def normalized_gini(labels: np.ndarray, predictions: np.ndarray) -> float:
    """``G(labels, predictions) / G(labels, labels)`` (see the module docstring)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(predictions, dtype=np.float64)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    best = _gini(y, y)
    return _gini(y, s) / best if best != 0 else float("nan")


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Spearman's rank correlation; NaN if either side is constant."""
    a = ranks(np.asarray(labels, dtype=np.float64))
    b = ranks(np.asarray(predictions, dtype=np.float64))
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def value_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R², normalized Gini and Spearman correlation of predictions ``[n]`` against labels ``[n]``."""
    y = np.asarray(labels, dtype=np.float64)
    error = np.asarray(predictions, dtype=np.float64) - y
    mse = float(np.mean(error**2)) if y.size else float("nan")
    variance = float(np.var(y)) if y.size else 0.0
    return {"rmse": mse**0.5, "mae": float(np.mean(np.abs(error))) if y.size else float("nan"),
            "r2": 1.0 - mse / variance if variance > 0 else float("nan"),
            "gini": normalized_gini(y, predictions), "spearman": spearman(y, predictions)}
