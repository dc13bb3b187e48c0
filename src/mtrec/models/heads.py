"""Models for tasks whose loss reads several outputs per row (ZILN's probability, mean and scale).

Every model gives one output ``[B]`` per task. A task that needs more (see
:attr:`~mtrec.features.schema.TaskSpec.head_names`) has the model built on
:meth:`~mtrec.features.schema.DatasetSchema.with_output_heads`, where each further output is a task of its
own (its own tower, gate or task experts, as the architecture gives any task), appended after the real
tasks so that a model chaining its tasks in order (AITM) keeps their chain. :class:`OutputHeads` stacks a
task's outputs into ``[B, K]`` in the order of its head names, so that the objective sees one entry per
task.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding


class OutputHeads(MultiTaskModel):
    """``inner`` (built on ``schema.with_output_heads()``) read back per task of ``schema``: ``[B]`` for a
    task with one output, ``[B, K]`` for a task with K (its head names' order)."""

    def __init__(self, schema: DatasetSchema, inner: MultiTaskModel) -> None:
        super().__init__(schema)
        self.inner = inner
        self.heads = {t.name: t.head_names for t in schema.tasks}

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        outputs = self.inner(features)
        return {task: outputs[task] if len(heads) == 1 else torch.stack([outputs[h] for h in heads], dim=-1)
                for task, heads in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.inner.shared_parameters()

    def shared_representation(self) -> FeatureEmbedding | None:
        return self.inner.shared_representation()


def with_output_heads(schema: DatasetSchema, inner: MultiTaskModel) -> OutputHeads:
    """``inner`` wrapped in :class:`OutputHeads`, declaring the same default objective as ``inner``'s class
    (a class attribute, so the wrapper's class is made per wrapped class)."""
    cls = type(inner)
    wrapper = type(f"{cls.__name__}OutputHeads", (OutputHeads,), {"default_objective": cls.default_objective})
    return wrapper(schema, inner)
