"""OMoE, the one-gate mixture of experts (the baseline of Ma et al., KDD 2018, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts").

Shared: the embeddings, a group of expert MLPs and ONE softmax gate over them, whose mixture is the
input of every task. Task-specific: one tower per task. Sequences, if the schema has them, are
mean-pooled into extra fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers


@register_model("omoe")
class OMoE(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert_sizes: Sequence[int] = (256, 128),
        tower_sizes: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.gate = Gates(in_dim, 1, num_experts)
        self.towers = TaskTowers(len(self.task_names), self.experts.out_dim, tower_sizes, dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(batch).flatten(1)  # [B, F*d]
        shared = mix(self.experts(x), self.gate(x)).squeeze(0)  # [B, H]
        logits = self.towers(shared)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' last layer."""
        return list(self.experts.last_layer().parameters())
