"""Evaluation metrics per task: AUC, GAUC (per user), logloss; RMSE, MAE and R² for regression tasks."""

from mtrec.metrics.ranking import auc, evaluate_tasks, gauc, logloss, regression_metrics, task_score

__all__ = ["auc", "evaluate_tasks", "gauc", "logloss", "regression_metrics", "task_score"]
