"""Single-task baseline: one independent network per task (the "separate models" practice).

Shared: nothing. Task-specific: everything, the embeddings included: task ``k``'s embeddings are
columns ``k*d .. (k+1)*d`` of one table of width ``T*d``, and its network is the ``k``-th MLP of a
:class:`~mtrec.nn.mlp.TaskTowers`. The parameter sets are disjoint and the loss is a sum over tasks, so
training is exactly that of T separate models, while one gather and one batched matmul per layer serve
all of them. Sequences, if the schema has them, are mean-pooled into extra fields.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import TaskTowers
from mtrec.typed import Count, Dropout, Sizes


@register_model("single_task")
class SingleTask(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        hidden_sizes: Sizes = (256, 128, 64),
        dropout: Dropout = 0.0,
    ) -> None:
        super().__init__(schema)
        n_tasks = len(self.task_names)
        self.embedding_dim = embedding_dim
        self.embedding = FeatureEmbedding(schema, n_tasks * embedding_dim)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.networks = TaskTowers(n_tasks, in_dim, hidden_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        fields = self.embedding.all_fields(features)  # [B, F, T*d]
        B, F = fields.shape[0], fields.shape[1]
        per_task = fields.view(B, F, -1, self.embedding_dim).permute(2, 0, 1, 3)  # [T, B, F, d]
        logits = self.networks(per_task.reshape(-1, B, F * self.embedding_dim))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: the tasks share no parameter."""
        return []
