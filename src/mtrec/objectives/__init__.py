"""Objectives (loss terms and the predictions they evaluate and serve) and task-weighting strategies;
importing the package registers every built-in objective and strategy."""

from mtrec.objectives import escm2, gradient_balancing, multibalance
from mtrec.objectives.objective import (
    Objective,
    ObjectiveConfigError,
    create_objective,
    list_objectives,
    objective_options,
    register_objective,
)

__all__ = [
    "Objective",
    "ObjectiveConfigError",
    "create_objective",
    "escm2",
    "gradient_balancing",
    "list_objectives",
    "multibalance",
    "objective_options",
    "register_objective",
]
