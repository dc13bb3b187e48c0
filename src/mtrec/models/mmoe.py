"""MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts").

Shared: the embeddings and a group of expert MLPs. Task-specific: one softmax gate over the experts per
task, and one tower per task. Sequences, if the schema has them, are pooled into extra fields
(``sequence_pooling``: ``mean`` or DIN-style ``attention``, see :mod:`mtrec.nn.embedding`).

Variant ``omoe``: the one-gate mixture of experts (the paper's OMoE baseline), ``gate_per_task=False``:
ONE softmax gate whose mixture is the input of every task (same parameter layout, the gate group holding
one gate).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model, register_variant
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes


@register_model("mmoe")
class MMoE(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_experts: Count = 4,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
        gate_per_task: bool = True,
    ) -> None:
        super().__init__(schema)
        self.gate_per_task = gate_per_task
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.gates = Gates(in_dim, len(self.task_names) if self.gate_per_task else 1, num_experts)
        self.towers = TaskTowers(len(self.task_names), self.experts.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        mixed = mix(self.experts(x), self.gates(x))  # [T, B, H] (one gate: [1, B, H])
        logits = self.towers(mixed if self.gate_per_task else mixed.squeeze(0))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' last layer (every task reads every expert)."""
        return list(self.experts.last_layer().parameters())


register_variant("omoe", MMoE, gate_per_task=False)  # OMoE: one gate whose mixture every task reads
