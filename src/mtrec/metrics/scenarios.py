"""Metrics per scenario: a dataset's scenario ids named by their raw values, and any per-task metrics
computed once per scenario over that scenario's rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mtrec.features.encoders import FeatureEncoders
from mtrec.features.schema import FIRST_ID, OOV_ID, DatasetSchema

UNKNOWN_SCENARIO = "(unknown)"  # the name of the out-of-vocabulary scenario id


def scenario_names(schema: DatasetSchema, encoders: FeatureEncoders | None) -> dict[int, str]:
    """Scenario id -> its raw value (``s0``, ``ES``), from the scenario's vocabulary; ``id <n>`` for each id
    where there are no encoders, ``(unknown)`` for the out-of-vocabulary id. Empty without a scenario."""
    column = schema.scenario_column
    if column is None:
        return {}
    feature = schema.sparse[column]
    vocab = None if encoders is None else encoders.vocabularies.get(feature.table_name)
    values = vocab.to_list() if vocab is not None else [f"id {i}" for i in range(FIRST_ID, feature.vocab_size)]
    return {OOV_ID: UNKNOWN_SCENARIO, **{i + FIRST_ID: value for i, value in enumerate(values)}}


def per_scenario(ids: np.ndarray, names: dict[int, str],
                 metrics: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{scenario: metrics(rows)}`` for each scenario present in ``ids`` ``[N]``, in id order; ``rows`` is
    the boolean mask ``[N]`` of that scenario's rows."""
    return {names.get(int(i), f"id {int(i)}"): metrics(ids == i) for i in np.unique(ids)}
