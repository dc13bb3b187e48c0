"""Names for the rows and columns of what blocks record, from the schema alone (never a model's class)."""

from __future__ import annotations

from mtrec.features.schema import DatasetSchema

MODEL_PREFIX = "models.all."  # a one-model scorer's path to its model


def block_name(path: str) -> str:
    """A recording block's path in the model, as the report names it (``gates``,
    ``extraction.levels.0.task_gates``; a per-task copy keeps its task: ``models.click.gates``)."""
    return path.removeprefix(MODEL_PREFIX) or "model"


def unit_labels(n: int, schema: DatasetSchema, one: str = "shared") -> list[str]:
    """Labels of a block's ``n`` parallel units (gates, SENets): the task names when there is one unit per
    task, ``one`` for a single unit (whose output every task reads), else ``gate i``."""
    if n == len(schema.tasks):
        return schema.task_names
    if n == 1:
        return [one]
    return [f"gate {i}" for i in range(n)]


def field_labels(n: int, schema: DatasetSchema) -> list[str]:
    """The names of ``n`` embedded fields in the embedding's order (sparse, dense, sequences) when the
    count matches the schema's, else ``field i``."""
    names = schema.feature_names
    return names if n == len(names) else [f"field {i}" for i in range(n)]


def behaviour_labels(n: int, schema: DatasetSchema) -> list[str]:
    """The schema's ``n`` behaviour types in first-appearance order, else ``behaviour i``."""
    behaviours = list(dict.fromkeys(s.behaviour for s in schema.sequences))
    return behaviours if n == len(behaviours) else [f"behaviour {i}" for i in range(n)]
