"""Model selection on the validation scores (``train.select``), and the weights it keeps.

``mean`` keeps the weights of the epoch with the best :func:`~mtrec.metrics.mean_selection_score`: the
mean validation AUC when every task is binary, else minus the mean over tasks of each task's validation
loss relative to its first epoch's (metrics on different scales are never averaged); ``per_task`` keeps,
for each task, the weights of that task's own best epoch (highest AUC of a binary task, R² of a value
task), and the task is evaluated and served from them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from mtrec.metrics import mean_selection_score, task_score
from mtrec.models import MultiTaskModel
from mtrec.objectives.objective import Objective
from mtrec.objectives.scorer import Scorer
from mtrec.training.placement import Replicated

MEAN = "mean"  # the selection key of train.select: mean


class ModelSelection:
    """The best weights of each selection key (``mean``, or each task with ``per_task``) so far."""

    def __init__(self, select: str, placement: Replicated) -> None:
        self.select = select
        self.placement = placement
        self.best_states: dict[str, dict[str, torch.Tensor]] = {}  # selection key -> weights of its best epoch

    def scores(self, metrics: dict[str, dict[str, float]], first: dict[str, dict[str, float]]) -> dict[str, float]:
        """Selection scores by key: ``{"mean": mean_selection_score}`` (``first``: the first epoch's
        validation metrics), or each task's own score (``per_task``; undefined: -inf)."""
        if self.select == MEAN:
            return {MEAN: mean_selection_score(metrics, first)}
        scores = {t: task_score(m) for t, m in metrics.items()}
        return {t: -math.inf if math.isnan(v) else v for t, v in scores.items()}

    def update(self, improved: list[str], valid: dict[str, dict[str, float]],
               best_valid: dict[str, dict[str, float]]) -> None:
        """Keep the current weights as the best of the keys ``improved``, and their tasks' validation
        metrics ``valid`` in ``best_valid``."""
        if not improved:
            return
        weights = self.placement.snapshot()
        for key in improved:
            self.best_states[key] = weights
        for task in valid:
            if task in improved or MEAN in improved:
                best_valid[task] = valid[task]

    @staticmethod
    def mark(improved: list[str]) -> str:
        """The log's mark of an epoch that improved ``improved``."""
        if not improved:
            return ""
        return "  *best*" if improved == [MEAN] else f"  *best: {', '.join(improved)}*"

    def best_epochs(self, best_epoch: dict[str, int], task_names: list[str]) -> dict[str, int]:
        """Per task, the epoch its selected weights come from (-1: none)."""
        return {t: best_epoch.get(MEAN, best_epoch.get(t, -1)) for t in task_names}

    def selected_weights(self) -> dict[str, torch.Tensor]:
        """The selected weights as the run directory stores them (see :meth:`Scorer.model_state`), whole
        on rank 0 (a collective: sharded tables are gathered)."""
        if self.select == MEAN:
            return self.placement.full_state(self.best_states[MEAN])
        return {f"{task}.{k}": v for task, state in self.best_states.items() for k, v in state.items()}

    def selected_scorer(self, model: MultiTaskModel, objective: Objective, scorer: Scorer,
                        log: Callable[[str], None]) -> Scorer:
        """The scorer of the selected weights (``scorer``, of the last weights, if no epoch finished)."""
        if not self.best_states:
            log("no epoch finished; keeping the last weights")
            return scorer
        if self.select == MEAN:
            self.placement.restore(self.best_states[MEAN])
            return scorer
        copies = {}
        for task, state in self.best_states.items():
            copies[task] = copy.deepcopy(model)
            copies[task].load_state_dict(state)
        return Scorer(objective, copies, scorer.name)
