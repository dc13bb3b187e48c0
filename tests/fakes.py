"""Tiny random datasets for tests: every kind of feature and a task observed after another."""

from __future__ import annotations

import dataclasses

import numpy as np

from mtrec.data.dataset import PreparedDataset
from mtrec.features.schema import DatasetSchema, DenseFeature, SequenceFeature, SparseFeature, TaskSpec
from mtrec.models import MultiTaskModel
from mtrec.objectives import Objective, create_objective
from mtrec.objectives.scorer import Scorer


def default_objective(model: MultiTaskModel) -> Objective:
    """The objective ``model`` trains with when the config names none."""
    name, options = model.default_objective
    return create_objective(name, model.schema, **options)


def scorer(model: MultiTaskModel) -> Scorer:
    """``model`` read through its default objective, as export and serving score it."""
    return Scorer(default_objective(model), model, model.registry_name)


def tiny_schema(seq_len: int = 6) -> DatasetSchema:
    return DatasetSchema(
        sparse=(SparseFeature("user_id", 30), SparseFeature("item_id", 40), SparseFeature("category", 8)),
        dense=(DenseFeature("price"), DenseFeature("activity")),
        sequences=(
            SequenceFeature("hist_click", 40, seq_len, "click", table="item_id", target="item_id"),
            SequenceFeature("hist_buy", 40, seq_len, "buy", table="item_id", target="item_id"),
        ),
        tasks=(TaskSpec("click"), TaskSpec("conversion", observed_after="click")),
        user_id="user_id",
    )


def tiny_dataset(rows: int = 240, seed: int = 0) -> PreparedDataset:
    """Random features; labels depend on them a little so that learning is possible."""
    rng = np.random.default_rng(seed)
    schema = tiny_schema()
    sparse = np.stack([rng.integers(2, f.vocab_size, rows) for f in schema.sparse], axis=1)
    dense = rng.normal(size=(rows, len(schema.dense))).astype(np.float32)
    sequences = {}
    for s in schema.sequences:
        ids = rng.integers(2, s.vocab_size, (rows, s.max_len))
        lengths = rng.integers(0, s.max_len + 1, rows)
        ids[np.arange(s.max_len)[None, :] >= lengths[:, None]] = 0
        sequences[s.name] = ids
    click = (rng.random(rows) < 1 / (1 + np.exp(-(dense[:, 0] * 1.5 - 0.5)))).astype(np.float32)
    conv = click * (rng.random(rows) < 1 / (1 + np.exp(-dense[:, 1]))).astype(np.float32)
    perm = rng.permutation(rows)
    a, b = int(0.6 * rows), int(0.8 * rows)
    return PreparedDataset(
        schema=schema,
        sparse=sparse,
        dense=dense,
        sequences=sequences,
        labels=np.stack([click, conv], axis=1),
        splits={"train": perm[:a], "valid": perm[a:b], "test": perm[b:]},
    )


def with_regression_task(data: PreparedDataset) -> PreparedDataset:
    """``data`` with a third task, ``spend``: a regression task observed after click, its value growing
    with the first dense feature on clicked rows (0 elsewhere)."""
    schema = dataclasses.replace(
        data.schema, tasks=(*data.schema.tasks, TaskSpec("spend", observed_after="click", type="regression")))
    labels = np.asarray(data.labels)
    spend = labels[:, 0] * np.exp(0.5 * np.asarray(data.dense)[:, 0])
    return dataclasses.replace(data, schema=schema, labels=np.concatenate([labels, spend[:, None]], axis=1))


def with_scenario(data: PreparedDataset) -> PreparedDataset:
    """``data`` whose ``category`` feature is the scenario (six scenario values, ids 2 to 7)."""
    return dataclasses.replace(data, schema=dataclasses.replace(data.schema, scenario="category"))
