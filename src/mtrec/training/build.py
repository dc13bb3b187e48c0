"""The one place a run config becomes modules: the model, its objective and the weighting strategy.

:func:`resolve_config` fills in what a config leaves to defaults (the model's options, the objective when
``train.objective`` is empty) and is the only place the objective is resolved; :func:`build_run` builds
the three modules of a run from it. Training, loading a run's weights, the run directory's "was this run
started with that config" check, resume and the benchmarks' training step all build through here. Neither
function changes its input.
"""

from __future__ import annotations

from mtrec.features.schema import DatasetSchema
from mtrec.models import MultiTaskModel, create_model, model_class, model_options
from mtrec.objectives.objective import Objective, ObjectiveConfigError, create_objective
from mtrec.objectives.weighting import WeightingStrategy, create_weighting
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.footprint import TRAINING_COPIES, check_fits


def resolved_train(train: TrainConfig, model: type[MultiTaskModel]) -> TrainConfig:
    """A copy of ``train`` naming the objective it trains with: ``train.objective`` when set (with its
    options as given), else the model's default objective with its options updated by
    ``train.objective_options``."""
    if train.objective:
        return train.model_copy(deep=True)
    name, options = model.default_objective
    return train.model_copy(update={"objective": name, "objective_options": {**options, **train.objective_options}},
                            deep=True)


def resolve_config(config: RunConfig) -> RunConfig:
    """A copy of ``config`` as a run saves it: every model option filled in, the objective named."""
    return config.model_copy(update={
        "model_options": model_options(config.model, config.model_options),
        "train": resolved_train(config.train, model_class(config.model)),
    }, deep=True)


def objective_and_weighting(model: MultiTaskModel, train: TrainConfig) -> tuple[Objective, WeightingStrategy]:
    """The objective (``train.objective``, else the model's default) and the weighting strategy that
    train ``model``; ConfigError naming the key for options that do not fit."""
    resolved = resolved_train(train, type(model))
    try:
        objective = create_objective(resolved.objective, model.schema, **resolved.objective_options)
    except ObjectiveConfigError as exc:
        raise ConfigError(f"train.objective: {exc}") from exc
    weighting = create_weighting(resolved.weighting, model.task_names, **resolved.weighting_options)
    return objective, weighting


def build_run(config: RunConfig, schema: DatasetSchema, copies: int = TRAINING_COPIES
              ) -> tuple[MultiTaskModel, Objective, WeightingStrategy]:
    """The untrained model of ``config`` on data of ``schema``, its objective and its weighting strategy
    (``config`` is left as it is). Refused first (ConfigError naming the setting) if ``copies`` times the
    model's size exceeds the memory available (see :mod:`mtrec.training.footprint`)."""
    resolved = resolve_config(config)
    check_fits(resolved.model, schema, resolved.model_options, copies)
    model = create_model(resolved.model, schema, **resolved.model_options)
    return (model, *objective_and_weighting(model, resolved.train))
