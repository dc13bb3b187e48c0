"""AdaTT, the Adaptive Task-to-Task Fusion Network (Li et al., KDD 2023, "AdaTT: Adaptive Task-to-Task
Fusion Network for Multitask Learning in Recommendations").

A stack of ``num_levels`` fusion levels, then one tower per task. At level ``l`` every task ``t`` owns
``m = num_task_experts`` experts that read task ``t``'s input ``x_t`` (the flattened embeddings at the
first level, task ``t``'s fusion output of the level below after it), and ``s = num_shared_experts``
optional shared experts read the shared input ``x_s``. With ``E`` the outputs of all ``T*m + s`` experts
of the level and ``E_t`` task ``t``'s own ``m``, task ``t``'s fusion unit is

    f_t = sum_i softmax(W_t x_t)_i E_i  +  sum_j v_tj E_tj

the adaptive fusion (a gate of task ``t`` over **every** expert, other tasks' included: task-to-task
fusion) plus the linear residual over the task's own experts, with learned ``v_t`` (fixed to 1 when
``m = 1``, as in the paper). Below the last level, when there are shared experts, a shared fusion unit
``f_s = sum_i softmax(W_s x_s)_i E_i`` (no residual) gives the next level's shared input.

Shared: the embeddings, the shared experts, the shared fusion units, and every expert's output through
the other tasks' gates. Task-specific: each task's experts (trained by every task through the gates, by
their own task also through the residual), fusion gate ``W_t``, residual weights ``v_t`` and tower.
Sequences, if the schema has them, are mean-pooled into extra fields. Each level is an
:class:`~mtrec.nn.experts.ExpertLevel` whose gates see every expert, with the residual switched on.
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
from mtrec.typed import Count, Dropout, Layers, NonNegative, Sizes


@register_model("adatt")
class AdaTT(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_levels: Count = 2,
        num_task_experts: Count = 2,
        num_shared_experts: NonNegative = 1,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        # every gate sees every expert (task-to-task fusion), plus the residual over the task's own
        self.levels = task_levels(self.embedding.num_all_fields * embedding_dim, len(self.task_names), num_levels,
                                  num_task_experts, num_shared_experts, expert_sizes, sees_all=True,
                                  dropout=dropout, residual=True)
        self.towers = TaskTowers(len(self.task_names), self.levels.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(self.levels(x))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last level's experts' last layers: every task's fusion gate reads every expert."""
        return [p for layer in self.levels.top().last_layers() for p in layer.parameters()]
