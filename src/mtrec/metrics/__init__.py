"""Evaluation metrics per task: AUC, GAUC (per user), logloss of binary tasks; RMSE, MAE, R², normalized
Gini and Spearman correlation of value (regression) tasks."""

from mtrec.metrics.ranking import auc, gauc, logloss
from mtrec.metrics.tasks import (
    evaluate_tasks,
    format_metrics,
    is_value_task,
    mean_selection_score,
    score_name,
    task_score,
    validation_loss,
)
from mtrec.metrics.values import normalized_gini, spearman, value_metrics

__all__ = ["auc", "evaluate_tasks", "format_metrics", "gauc", "is_value_task", "logloss", "mean_selection_score",
           "normalized_gini", "score_name", "spearman", "task_score", "validation_loss", "value_metrics"]
