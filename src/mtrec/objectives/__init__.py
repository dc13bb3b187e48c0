"""Objectives (loss terms and the predictions they evaluate and serve) and task-weighting strategies."""

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
    "list_objectives",
    "objective_options",
    "register_objective",
]
