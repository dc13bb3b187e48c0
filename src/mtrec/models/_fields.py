"""Sparse fields named by a model option (PEPNet's persona and domain features, POSO's personal features,
APG's condition), and the scenario input of the multi-scenario models (STAR, HiNet, M3oE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError


def sparse_field_indices(schema: DatasetSchema, names: Sequence[str], model: str, option: str) -> list[int]:
    """Positions of the sparse features ``names`` among the fields; an unknown name is an error naming
    the model's option."""
    index = {f.name: i for i, f in enumerate(schema.sparse)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ModelConfigError(f"{model}: {option} {unknown} are not sparse features; sparse features: "
                               f"{sorted(index)}")
    return [index[n] for n in names]


def default_persona(schema: DatasetSchema) -> list[str]:
    """The user id and the item ids that histories target; every sparse field if there are none."""
    names = [schema.user_id] if schema.user_id else []
    names += [s.target for s in schema.sequences if s.target and s.target not in names]
    return names or [f.name for f in schema.sparse]


def scenario_field(schema: DatasetSchema, model: str) -> tuple[int, int]:
    """A multi-scenario model's scenario: its field among the sparse fields and the number of its ids ``S``
    (padding and out-of-vocabulary included); a one-line error naming the model where the dataset has no
    scenario."""
    column = schema.scenario_column
    if column is None:
        raise ModelConfigError(f"{model} is a multi-scenario model: its dataset needs a scenario (a dataset "
                               f"config's 'scenario' key naming a sparse feature, or synthetic:scenarios); this "
                               f"dataset has none")
    return column, schema.scenario_count


def scenario_input(features: Features, model: str) -> torch.Tensor:
    """The batch's scenario ids ``[B]``; a ValueError naming the model where the batch carries none."""
    if features.scenario is None:
        raise ValueError(f"{model}: the batch carries no scenario ids (Features.scenario is None)")
    return features.scenario


def per_scenario(outputs: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
    """Each row's own scenario's output ``[B, ...]`` from every scenario's outputs ``[S, B, ...]``."""
    return outputs[scenario, torch.arange(outputs.shape[1], device=outputs.device)]
