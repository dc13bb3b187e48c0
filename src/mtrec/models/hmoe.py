"""HMoE, the Hybrid of implicit and explicit Mixture-of-Experts (Li et al., CIKM 2020, "Improving
Multi-Scenario Learning to Rank in E-commerce by Exploiting Task Relationships in the Label Space"),
applied to tasks.

Implicit part: an MMoE (shared experts, a softmax gate per task, a tower per task) gives every task's
own logit ``l_t``. Explicit part, in the label space: task ``t``'s output is a gated mixture of every
task's logit,

    y_t = sum_s g_ts(x) l~_s,    l~_t = l_t,    l~_s = sg(l_s) for s != t,

with ``g_t`` a softmax gate over the tasks reading the field embeddings. So task ``t`` borrows the other
tasks' predictions where they help (all forward), while its loss trains only its own tower and gate
through them (the stop-gradient keeps task ``t`` from pulling another task's tower toward its label).

Choices where the paper leaves room: the paper mixes scenarios' ranking scores; here the mixed values are
the tasks' logits, so ``y_t`` stays a logit that every objective reads as it reads any model's; the
label-space gate reads the same input as the experts. Shared: the embeddings and the experts.
Task-specific: each task's expert gate, tower and label-space gate. Sequences, if the schema has them,
are pooled into extra fields.
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
from mtrec.nn.experts import Gates, mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes


@register_model("hmoe")
class HMoE(MultiTaskModel):
    """HMoE (Li et al., CIKM 2020): MMoE whose task outputs are mixed again in the label space, each task
    reading the others' logits under stop-gradient."""

    own: torch.Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_experts: Count = 4,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.gates = Gates(in_dim, T, num_experts)
        self.towers = TaskTowers(T, self.experts.out_dim, tower_sizes, dropout)
        self.label_gates = Gates(in_dim, T, T)  # g_t over the tasks' logits
        self.register_buffer("own", torch.eye(T, dtype=torch.bool).unsqueeze(-1), persistent=False)  # [T, T, 1]

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        own_logits = self.towers(mix(self.experts(x), self.gates(x)))  # l [T, B]
        seen = torch.where(self.own, own_logits.unsqueeze(0), own_logits.detach().unsqueeze(0))  # [T, S, B]
        logits = (self.label_gates(x) * seen.transpose(1, 2)).sum(-1)  # y [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' last layer (every task reads every expert)."""
        return list(self.experts.last_layer().parameters())
