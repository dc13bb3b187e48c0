"""Scoring a split with a trained model (through its :class:`~mtrec.objectives.scorer.Scorer`) and
computing its metrics per task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtrec.data.batches import BatchIterator, gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.metrics import evaluate_tasks
from mtrec.metrics.scenarios import per_scenario
from mtrec.objectives.scorer import Scorer


@dataclass
class Predictions:
    """A split's predictions (probabilities of binary tasks, values of regression tasks), labels and masks
    per task (each ``[n]``, as :meth:`Scorer.targets` gives them: in the label's own units), user ids (or
    None), which tasks are regression tasks, and scenario ids ``[n]`` (or None)."""

    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    users: np.ndarray | None
    regression: frozenset[str] = frozenset()
    scenarios: np.ndarray | None = None

    def metrics(self) -> dict[str, dict[str, float]]:
        return evaluate_tasks(self.probs, self.labels, self.masks, self.users, self.regression)

    def metrics_by_scenario(self, names: dict[int, str]) -> dict[str, dict[str, dict[str, float]]]:
        """``{scenario: {task: metrics}}`` over each scenario's rows (``names``: scenario id -> raw value);
        empty without scenario ids."""
        if self.scenarios is None:
            return {}

        def on(rows: np.ndarray) -> dict[str, dict[str, float]]:
            return evaluate_tasks({t: v[rows] for t, v in self.probs.items()},
                                  {t: v[rows] for t, v in self.labels.items()},
                                  {t: v[rows] for t, v in self.masks.items()},
                                  None if self.users is None else self.users[rows], self.regression)

        return per_scenario(self.scenarios, names, on)


@torch.no_grad()
def predict_split(
    scorer: Scorer,
    dataset: PreparedDataset,
    split: str,
    batch_size: int = 8192,
    device: torch.device | str = "cpu",
    part: slice | None = None,
    min_batches: int = 0,
) -> Predictions:
    """Score every row of ``split`` once, in order (rows sorted within each batch); with ``part``, only
    those positions of the split (one rank's block). ``min_batches``: run forward passes (their outputs
    dropped) until that many were made, as ranks must whose every forward is a collective (sharded tables)."""
    was_training = scorer.training
    scorer.eval()
    schema = dataset.schema
    regression = frozenset(t.name for t in schema.tasks if not t.is_binary)
    user_col = [f.name for f in schema.sparse].index(schema.user_id) if schema.user_id else None
    probs: dict[str, list[torch.Tensor]] = {t: [] for t in schema.task_names}
    labels: dict[str, list[torch.Tensor]] = {t: [] for t in schema.task_names}
    masks: dict[str, list[torch.Tensor]] = {t: [] for t in schema.task_names}
    users: list[torch.Tensor] = []
    scenarios: list[torch.Tensor] = []
    rows = None if part is None else dataset.splits[split][part]
    made = 0
    for batch in BatchIterator(dataset, split, batch_size, shuffle=False, rows=rows):
        made += 1
        out = scorer(batch.features.to(device))
        batch_labels, batch_masks = scorer.targets(batch.labels, batch.masks, batch.row_weights())
        for t in schema.task_names:
            probs[t].append(out[t].float().cpu())
            labels[t].append(batch_labels[t])
            masks[t].append(batch_masks[t])
        if user_col is not None:
            users.append(batch.features.sparse[:, user_col])
        if batch.features.scenario is not None:
            scenarios.append(batch.features.scenario)
    if made < min_batches:
        filler = gather_batch(dataset, dataset.splits[split][:1]).features.to(device)
        for _ in range(min_batches - made):
            scorer(filler)
    scorer.train(was_training)

    def cat(parts: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
        return {t: torch.cat(v).numpy() for t, v in parts.items()}

    if not probs[schema.task_names[0]]:  # an empty part
        empty = {t: np.zeros(0, dtype=np.float32) for t in schema.task_names}
        no_ids = np.zeros(0, dtype=np.int64)
        return Predictions(empty, dict(empty), dict(empty), no_ids if user_col is not None else None, regression,
                           no_ids if schema.scenario is not None else None)
    users_array = torch.cat(users).numpy() if users else None
    scenario_array = torch.cat(scenarios).numpy() if scenarios else None
    return Predictions(cat(probs), cat(labels), cat(masks), users_array, regression, scenario_array)
