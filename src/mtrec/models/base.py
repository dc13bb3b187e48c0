"""The interface every model implements, so the trainer never needs to know a model's class."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from mtrec.features.schema import DatasetSchema
from mtrec.nn.embedding import FeatureEmbedding


class MultiTaskModel(nn.Module):
    """Base class: ``forward(features) -> {task: output [B]}`` (a logit for a binary task, the predicted
    value for a regression task), ``features`` a :class:`~mtrec.features.inputs.Features`.

    Models stay pure: no sigmoid for the loss, no loss, no device moves, no printing. What the outputs
    mean and how they are learned is the objective's (:mod:`mtrec.objectives`): a model only declares the
    objective it is trained with unless the config says otherwise (:attr:`default_objective`).
    """

    registry_name: str = ""  # set by the registry (a variant's model carries the variant's name)
    #: the objective (name, options) used when ``train.objective`` is not set
    default_objective: ClassVar[tuple[str, dict[str, Any]]] = ("masked", {})
    #: a multi-scenario model, built only for a dataset with a scenario (:attr:`DatasetSchema.scenario`)
    needs_scenario: ClassVar[bool] = False

    def __init__(self, schema: DatasetSchema) -> None:
        super().__init__()
        self.schema = schema
        self.task_names = schema.task_names

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last layer that all tasks share (GradNorm measures each task's gradient norm over these
        parameters); empty for a model that shares nothing. Default: the feature embedding; a model with
        shared layers above it returns the top one."""
        embedding = getattr(self, "embedding", None)
        return list(embedding.parameters()) if isinstance(embedding, nn.Module) else []

    def shared_representation(self) -> FeatureEmbedding | None:
        """The feature embedding whose output every task reads: the shared representation a weighting such
        as MultiBalance balances the task gradients on (:func:`~mtrec.nn.embedding.capturing`); None for a
        model whose tasks share nothing. Default: the model's ``embedding`` when it shares parameters."""
        embedding = getattr(self, "embedding", None)
        return embedding if isinstance(embedding, FeatureEmbedding) and self.shared_parameters() else None
