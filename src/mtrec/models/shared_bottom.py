"""Shared-Bottom (Caruana, 1997, "Multitask Learning"): hard parameter sharing.

Shared: the embeddings and one bottom MLP. Task-specific: one tower per task.
Sequences, if the schema has them, are mean-pooled into extra fields.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP, TaskTowers
from mtrec.typed import Count, Dropout, Sizes


@register_model("shared_bottom")
class SharedBottom(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        bottom_sizes: Sizes = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        self.bottom = MLP(self.embedding.num_all_fields * embedding_dim, bottom_sizes, dropout)
        self.towers = TaskTowers(len(self.task_names), self.bottom.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(self.bottom(x))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The bottom MLP's last layer."""
        return list(self.bottom.last_layer().parameters())
