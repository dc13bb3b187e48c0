"""STEM-Net (Su et al., AAAI 2024, "STEM: Unleashing the Power of Embeddings for Multi-task
Recommendation"): Shared and Task-specific EMbeddings, with an All-Forward, Task-specific-Backward gate.

There are ``T + 1`` embedding tables: one per task and one shared (held as column blocks of one table of
width ``(T+1)*d``, so all are read with one gather; block ``t`` is task ``t``'s table, block ``T`` the
shared one). Task ``t``'s experts read task ``t``'s embeddings ``e_t``; the shared experts read the shared
embeddings ``e_s``. Task ``t``'s gate reads ``e_t`` and mixes **all** experts, but the experts of every
other task enter under stop-gradient (``sg``): with ``E_i`` the outputs of the level's experts,

    h_t = sum_i softmax(W_t e_t)_i * (E_i  if expert i is task t's or shared,  else sg(E_i))

so every task's representation reaches every task's forward pass (all forward), and task ``t``'s loss
trains only its own table and experts and the shared ones (task-specific backward): task ``i``'s loss
gives zero gradient to task ``j``'s embedding table and experts. Then one tower per task on ``h_t``.

With ``num_levels > 1`` the levels stack like PLE's: level ``l+1``'s task ``t`` experts and gate read
``h_t`` of level ``l``, and below the last level a shared gate over all experts (reading the shared
input, **without** stop-gradient, as in the paper) gives the next level's shared input; through it every
task's loss reaches every expert of the lower levels, so the zero-gradient property holds for the last
level's experts and, with one level (the default), for all.

Shared: the shared table, the shared experts (and shared gates). Task-specific: each task's table,
experts, gate and tower. Each level is an :class:`~mtrec.nn.experts.ExpertLevel` whose gates see every
expert, with ``stop_others`` switched on. Sequences, if the schema has them, are mean-pooled into extra fields (of every
table).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import task_levels
from mtrec.nn.mlp import TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes


@register_model("stem")
class STEM(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_levels: Count = 1,
        num_task_experts: Count = 1,
        num_shared_experts: Count = 1,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        self.embedding_dim = embedding_dim
        # T task tables, then the shared one
        self.embedding = FeatureEmbedding(schema, (T + 1) * embedding_dim, sequence_pooling)
        # every gate sees every expert; other tasks' experts under stop-gradient
        self.levels = task_levels(self.embedding.num_all_fields * embedding_dim, T, num_levels, num_task_experts,
                                  num_shared_experts, expert_sizes, sees_all=True, dropout=dropout,
                                  stop_others=True)
        self.towers = TaskTowers(T, self.levels.out_dim, tower_sizes, dropout)

    def tables(self, features: Features) -> torch.Tensor:
        """Every table's flattened field embeddings: ``[T+1, B, F*d]`` (block ``T`` the shared table's)."""
        fields = self.embedding.all_fields(features)  # [B, F, (T+1)*d]
        B, F = fields.shape[0], fields.shape[1]
        blocks = fields.view(B, F, -1, self.embedding_dim).permute(2, 0, 1, 3)  # [T+1, B, F, d]
        return blocks.reshape(-1, B, F * self.embedding_dim)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        tables = self.tables(features)  # [T+1, B, F*d]
        logits = self.towers(self.levels(tables[:-1], tables[-1]))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last level's shared experts' last layer (every task trains it)."""
        return list(self.levels.top().last_layers()[-1].parameters())
