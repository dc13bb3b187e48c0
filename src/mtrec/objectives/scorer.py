"""A trained model read through its objective: features in, each task's prediction out.

This is what evaluation, export and serving call. With per-task model selection (``train.select:
per_task``) each task is read from its own copy of the model, holding the weights of that task's best
validation epoch (one forward pass per task).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.objectives.objective import Objective
from mtrec.objectives.values import label_units


class Scorer(nn.Module):
    """``features -> {task: prediction [B]}`` in task order (probabilities of binary tasks, values of
    regression tasks in the label's own units).

    ``models``: one model for every task, or a dict task -> the model that task is read from (every task
    of the objective's schema must have one).
    """

    def __init__(self, objective: Objective, models: nn.Module | Mapping[str, nn.Module], name: str = "") -> None:
        super().__init__()
        self.objective = objective
        self.schema = objective.schema
        self.task_names = objective.schema.task_names
        self.name = name or "model"  # the model's registry name, for messages
        self.per_task = isinstance(models, Mapping)
        if isinstance(models, Mapping):
            missing = sorted(set(self.task_names) - set(models))
            if missing:
                raise ValueError(f"per-task scorer: no model for task(s) {missing}")
            self.models = nn.ModuleDict({t: models[t] for t in self.task_names})
        else:
            self.models = nn.ModuleDict({"all": models})

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        if not self.per_task:
            return self.objective.predictions(self.models["all"](features))
        return {t: self.objective.predictions(self.models[t](features))[t] for t in self.task_names}

    def targets(self, labels: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                real: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """What :meth:`forward`'s predictions are evaluated against (see :func:`prediction_targets`)."""
        return prediction_targets(self.schema, labels, masks, real)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The weights as a run directory stores them: the model's own names (one model), or
        ``<task>.<name>`` per task (per-task selection)."""
        if not self.per_task:
            return self.models["all"].state_dict()
        return self.models.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`model_state` (strict: every key must fit)."""
        (self.models if self.per_task else self.models["all"]).load_state_dict(state)


def prediction_targets(schema: DatasetSchema, labels: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                       real: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What a scorer's predictions are evaluated against: per task the labels ``[B]`` and the rows they
    count on ``[B]`` (from a batch's labels and masks, ``real`` 1 on real rows). A binary task's as stored;
    a regression task's in the label's own units, and for one observed after another (whose prediction is
    the expected value per row) on every real row, 0 where it was not observed."""
    target_labels, target_masks = dict(labels), dict(masks)
    for task in schema.tasks:
        if task.is_binary:
            continue
        value = label_units(task, labels[task.name])
        if task.observed_after is not None:
            value, target_masks[task.name] = value * masks[task.name], real
        target_labels[task.name] = value
    return target_labels, target_masks
