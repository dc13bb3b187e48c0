"""Permutation importance of every field for every task.

A field (a sparse or dense column, or a whole behaviour history) is shuffled across the inspected rows,
breaking its link to the labels while keeping its distribution, and the task's metric is measured again:
the AUC drop of a binary task, the RMSE rise of a regression task (positive: the task relies on the
field). Each field is shuffled ``repeats`` times with permutations drawn from one seeded generator; the
report gives the mean and the standard deviation over the repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtrec.features.inputs import Features, features_of
from mtrec.features.schema import DatasetSchema
from mtrec.inspect.plots import heatmap
from mtrec.metrics import auc, value_metrics

Predict = Callable[[Features], dict[str, np.ndarray]]


@dataclass
class Importance:
    """Mean and standard deviation ``[F, T]`` of each field's metric loss per task, with the metric names."""

    fields: list[str]
    tasks: list[str]
    metric: dict[str, str]  # task -> "AUC drop" or "RMSE rise"
    mean: np.ndarray
    std: np.ndarray

    def to_json(self) -> dict[str, dict[str, float]]:
        return {t: dict(zip(self.fields, self.mean[:, j].tolist(), strict=True)) for j, t in enumerate(self.tasks)}

    def spread_json(self) -> dict[str, dict[str, float]]:
        return {t: dict(zip(self.fields, self.std[:, j].tolist(), strict=True)) for j, t in enumerate(self.tasks)}

    def ranking(self, task: str) -> list[str]:
        """The fields from the most to the least important for ``task``."""
        j = self.tasks.index(task)
        return [self.fields[i] for i in np.argsort(-self.mean[:, j], kind="stable")]


def task_quality(schema: DatasetSchema, predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Per task, over its observed rows: AUC (binary) or minus RMSE (regression): higher is better."""
    result = {}
    for task in schema.tasks:
        keep = masks[task.name] > 0
        y, p = labels[task.name][keep], predictions[task.name][keep]
        result[task.name] = auc(y, p) if task.is_binary else -value_metrics(y, p)["rmse"]
    return result


def permuted(features: Features, schema: DatasetSchema, field: int, order: torch.Tensor) -> Features:
    """``features`` with field ``field`` (schema order: sparse, dense, sequences) reordered by ``order``."""
    sparse, dense, sequences = features.sparse, features.dense, dict(features.sequences)
    n_sparse, n_dense = len(schema.sparse), len(schema.dense)
    if field < n_sparse:
        sparse = sparse.clone()
        sparse[:, field] = sparse[order, field]
    elif field < n_sparse + n_dense:
        dense = dense.clone()
        dense[:, field - n_sparse] = dense[order, field - n_sparse]
    else:
        name = schema.sequences[field - n_sparse - n_dense].name
        sequences[name] = sequences[name][order]
    return features_of(schema, sparse, dense, sequences)


def permutation_importance(
    predict: Predict, features: Features, labels: dict[str, np.ndarray], masks: dict[str, np.ndarray],
    schema: DatasetSchema, repeats: int = 3, seed: int = 0,
) -> Importance:
    """Each field's importance for each task (see the module docstring); ``predict`` scores all rows of
    ``features`` at once (it may batch inside)."""
    if repeats < 1:
        raise ValueError(f"permutation importance needs repeats >= 1, got {repeats}")
    generator = torch.Generator().manual_seed(seed)
    base = task_quality(schema, predict(features), labels, masks)
    fields, tasks = schema.feature_names, schema.task_names
    losses = np.zeros((len(fields), repeats, len(tasks)))
    for f in range(len(fields)):
        for r in range(repeats):
            order = torch.randperm(len(features), generator=generator)
            quality = task_quality(schema, predict(permuted(features, schema, f, order)), labels, masks)
            losses[f, r] = [base[t] - quality[t] for t in tasks]
    metric = {t.name: "AUC drop" if t.is_binary else "RMSE rise" for t in schema.tasks}
    return Importance(fields, tasks, metric, losses.mean(1), losses.std(1))


def plot_importance(importance: Importance, path: Path) -> None:
    metrics = sorted(set(importance.metric.values()))
    tasks = [f"{t}\n({importance.metric[t]})" for t in importance.tasks]
    heatmap(importance.mean, importance.fields, tasks, path,
            title=f"permutation importance: {' / '.join(metrics)} when one field is shuffled\n"
                  "(mean ± std over the repeats)",
            xlabel="task", ylabel="field (shuffled)", colorbar=f"{' / '.join(metrics)} (mean over repeats)",
            fmt=".3f", cmap="coolwarm", center=0.0, spread=importance.std)
