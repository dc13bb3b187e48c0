"""Objectives: what a model's outputs are trained to mean, and how they are read back.

An objective owns both sides of that contract, so that no model overrides a loss or a probability:

- :meth:`Objective.losses`: named scalar loss terms for a batch. Task names map to task losses (combined by
  the weighting strategy); any other name is an auxiliary term added with weight 1.
- :meth:`Objective.predictions`: each task's prediction ``[B]`` as it is evaluated and served: the
  probability of a binary task given the task it is observed after; the value of a regression task in the
  label's own units (its transform inverted, :func:`~mtrec.objectives.values.head_value`), and for one
  observed after another the entire-space expectation ``p(earlier) * E[value | earlier]``.

It is chosen by config (``train.objective``, options in ``train.objective_options``); a model declares its
default (:attr:`~mtrec.models.base.MultiTaskModel.default_objective`). Binary tasks are learned by BCE on
their logits, regression tasks by their :attr:`~mtrec.features.schema.TaskSpec.loss` (MSE, Huber or
ZILN) on the rows where they are observed (where the task they are observed after is positive) under
every objective. Objectives are ``nn.Module`` so that one with parameters joins the optimizer and
the checkpoint like a weighting strategy.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.objectives.losses import (
    entire_space_log_prob,
    expectation_calibration,
    log_one_minus_exp,
    per_row_loss,
    step_mean,
)
from mtrec.objectives.registry import Registry
from mtrec.objectives.values import head_value
from mtrec.typed import checked_options

CALIBRATOR = "calibrator"


class ObjectiveConfigError(ValueError):
    """An unknown objective, an option it does not take, or a schema it cannot train."""


class Objective(nn.Module):
    """Loss terms and predictions for a schema's tasks (see the module docstring)."""

    def __init__(self, schema: DatasetSchema) -> None:
        super().__init__()
        self.schema = schema

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per task ``[B]``: sigmoid of a binary task's logit; a regression task's value in the label's
        units, times :meth:`reach_probability` of the task it is observed after (if any)."""
        predictions = {}
        for task in self.schema.tasks:
            output = outputs[task.name]
            if task.is_binary:
                predictions[task.name] = torch.sigmoid(output)
                continue
            value = head_value(task, output)
            if task.observed_after is not None:
                value = value * self.reach_probability(outputs, task.observed_after)
            predictions[task.name] = value
        return predictions

    def reach_probability(self, outputs: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        """``p(task and every task it is observed after)`` ``[B]`` of a binary task: the product of the
        conditionals along its chain, each binary logit read as ``p(task | earlier)``."""
        return torch.exp(entire_space_log_prob(outputs, self.schema, task))

    def _loss(self, outputs: dict[str, torch.Tensor], batch: Batch, task: str, masked: bool) -> torch.Tensor:
        """The task's own loss, over its observed rows (``masked``) or over every real row."""
        spec = self.schema.task(task)
        per_row = per_row_loss(spec, outputs[task], batch.labels[task])
        return step_mean(per_row, batch, task if masked else None)


_OBJECTIVES: Registry[Objective] = Registry("objective", ObjectiveConfigError)
register_objective = _OBJECTIVES.register
list_objectives = _OBJECTIVES.names


def objective_options(name: str) -> dict[str, Any]:
    """The options an objective takes, with their defaults."""
    parameters = inspect.signature(_OBJECTIVES.get(name).__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in ("self", "schema")}


def check_objective_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the constructor of the objective ``name`` (names, types, ranges)."""
    unknown = sorted(set(options) - set(objective_options(name)))
    if unknown:
        raise ObjectiveConfigError(f"objective {name!r} has no option(s) {unknown}; "
                                   f"its options: {sorted(objective_options(name))}")
    return checked_options(_OBJECTIVES.get(name).__init__, options, f"train.objective_options of objective {name!r}",
                           ObjectiveConfigError, skip=("schema",))


def create_objective(name: str, schema: DatasetSchema, **options: Any) -> Objective:
    """Build the objective ``name`` for ``schema``; unknown or ill-typed options are a clear error."""
    return _OBJECTIVES.get(name)(schema, **check_objective_options(name, options))


@register_objective("masked")
class Masked(Objective):
    """Each task on the rows where it is observed: a task observed after another (conversion after click)
    is learned on that task's positives only, and its logit reads as the conditional probability."""

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        return {t: self._loss(outputs, batch, t, masked=True) for t in self.schema.task_names}


@register_objective("all_rows")
class AllRows(Objective):
    """Every binary task on every impression: a task observed after another learns its stored label (1 only
    where both happened), so its output is the entire-space probability ``p(conversion and click)``.
    Regression tasks are learned on their observed rows.

    ``predictions`` divides it by the earlier task's probability (clamped to [0, 1]) to give the
    conditional probability, as evaluated (on clicked rows) and served, comparable with other objectives.
    ``calibrator_weight`` > 0 adds AITM's Behavioral Expectation Calibrator (Xi et al., KDD 2021) as the
    auxiliary term ``calibrator``: ``calibrator_weight * sum over pairs of mean(max(p_later - p_earlier,
    0))``, for each binary task observed after another.
    """

    def __init__(self, schema: DatasetSchema, calibrator_weight: Annotated[float, Field(ge=0.0)] = 0.0) -> None:
        super().__init__(schema)
        if CALIBRATOR in schema.task_names:
            raise ObjectiveConfigError(f"objective all_rows: a task named {CALIBRATOR!r} clashes with the "
                                       "calibrator's loss term; rename the task")
        self.calibrator_weight = calibrator_weight
        self.pairs = [(t.name, t.observed_after) for t in schema.tasks if t.observed_after is not None and t.is_binary]

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        losses = {t.name: self._loss(outputs, batch, t.name, masked=not t.is_binary) for t in self.schema.tasks}
        if self.pairs and self.calibrator_weight > 0:
            probs = {t: torch.sigmoid(outputs[t]) for t in self.schema.task_names}
            penalties = [expectation_calibration(probs[later], probs[first], batch) for later, first in self.pairs]
            losses[CALIBRATOR] = self.calibrator_weight * torch.stack(penalties).sum()
        return losses

    def reach_probability(self, outputs: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        """The sigmoid of the task's logit, which this objective learns in the entire space."""
        return torch.sigmoid(outputs[task])

    def predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        entire = super().predictions(outputs)
        predictions = dict(entire)
        for later, earlier in self.pairs:
            predictions[later] = (entire[later] / entire[earlier].clamp_min(1e-12)).clamp(0.0, 1.0)
        return predictions


@register_objective("entire_space")
class EntireSpace(Objective):
    """ESMM's entire-space objective (Ma et al., SIGIR 2018), for any model and any chain depth.

    A binary task observed after another has its logit read as the conditional ``p(task | earlier)``; its
    loss is the BCE of the product along its chain (``p(click) * p(cart | click) * p(buy | cart)``;
    ``ctcvr = ctr * cvr`` in the paper's case) against the stored label (1 only where every step happened)
    over ALL rows, so it is learned in the entire impression space rather than on the biased sample of the
    earlier task's positives. Other binary tasks: BCE on all rows; regression tasks: on their observed rows.
    ``predictions`` are the conditionals (pCVR), as evaluated (on clicked rows) and served;
    :meth:`entire_space` gives the products.
    """

    def __init__(self, schema: DatasetSchema) -> None:
        super().__init__(schema)
        self.chained = [t.name for t in schema.tasks if t.observed_after is not None and t.is_binary]

    def entire_space(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each chained task's ``p(task and every task before it)`` ``[B]`` (pCTCVR for conversion)."""
        return {task: torch.exp(entire_space_log_prob(outputs, self.schema, task)) for task in self.chained}

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for task in self.schema.tasks:
            if task.name in self.chained:
                labels = batch.labels[task.name]
                log_p = entire_space_log_prob(outputs, self.schema, task.name)
                per_row = -(labels * log_p + (1 - labels) * log_one_minus_exp(log_p))
                losses[task.name] = step_mean(per_row, batch)
            else:
                losses[task.name] = self._loss(outputs, batch, task.name, masked=not task.is_binary)
        return losses
