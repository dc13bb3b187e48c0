"""The interface every model implements, so the trainer never needs to know a model's class."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.objectives.losses import masked_task_losses


class MultiTaskModel(nn.Module):
    """Base class: ``forward(batch) -> {task: logits [B]}`` (plus any derived outputs by name).

    Models stay pure: no sigmoid for the loss, no loss inside forward, no device moves, no printing.
    A model with its own objective (ESMM's entire space, AITM's calibrator) overrides :meth:`losses`;
    one whose task probabilities are not the sigmoid of its task logits overrides :meth:`probabilities`.
    """

    registry_name: ClassVar[str] = ""

    def __init__(self, schema: DatasetSchema) -> None:
        super().__init__()
        self.schema = schema
        self.task_names = schema.task_names

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms. Task names map to task losses (weighted by the weighting strategy);
        any other name is an auxiliary term added with weight 1. Default: masked BCE per task."""
        return masked_task_losses(outputs, batch)

    def probabilities(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's probability ``[B]``, as evaluated and served (default: sigmoid of its logit)."""
        return {task: torch.sigmoid(outputs[task]) for task in self.task_names}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last layer that all tasks share (GradNorm measures each task's gradient norm over these
        parameters); empty for a model that shares nothing. Default: the feature embedding; a model with
        shared layers above it returns the top one."""
        embedding = getattr(self, "embedding", None)
        return list(embedding.parameters()) if isinstance(embedding, nn.Module) else []
