"""Evaluation metrics per task: AUC, GAUC (per user), logloss."""

from mtrec.metrics.ranking import auc, evaluate_tasks, gauc, logloss

__all__ = ["auc", "evaluate_tasks", "gauc", "logloss"]
