"""Task relations: the Pearson correlation between tasks of the model's predictions, beside that of the
labels (over the rows where both tasks are observed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from mtrec.inspect.plots import save


@dataclass
class Relations:
    tasks: list[str]
    predictions: np.ndarray  # [T, T]
    labels: np.ndarray  # [T, T]

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "predictions": self.predictions.tolist(), "labels": self.labels.tolist()}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def task_relations(predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                   masks: dict[str, np.ndarray]) -> Relations:
    tasks = list(predictions)
    T = len(tasks)
    pred, lab = np.eye(T), np.eye(T)
    for i in range(T):
        for j in range(i + 1, T):
            both = (masks[tasks[i]] > 0) & (masks[tasks[j]] > 0)
            pred[i, j] = pred[j, i] = _correlation(predictions[tasks[i]][both], predictions[tasks[j]][both])
            lab[i, j] = lab[j, i] = _correlation(labels[tasks[i]][both], labels[tasks[j]][both])
    return Relations(tasks, pred, lab)


def plot_relations(relations: Relations, path: Path) -> None:
    T = len(relations.tasks)
    fig, axes = plt.subplots(1, 2, figsize=(3.0 + 2.4 * T, 1.8 + 0.9 * T))
    for ax, values, what in zip(axes, (relations.predictions, relations.labels), ("predictions", "labels"),
                                strict=True):
        image = ax.imshow(values, cmap="coolwarm", vmin=-1, vmax=1)
        ax.set_xticks(range(T), relations.tasks, rotation=45, ha="right")
        ax.set_yticks(range(T), relations.tasks if what == "predictions" else [])
        ax.set(title=f"correlation of the {what}")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=axes, label="Pearson correlation", fraction=0.046)
    fig.suptitle("task relations: how the model's predictions co-vary, beside the labels")
    save(fig, path)
