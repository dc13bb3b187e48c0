"""M3oE (Zhang et al., SIGIR 2024, "M3oE: Multi-Domain Multi-Task Mixture-of-Experts Recommendation
Framework"): shared, scenario and task mixtures of experts, fused at two levels.

Over the concatenated embeddings ``x`` ``[B, F*d]``, three expert modules:

- **shared**: ``num_shared_experts`` experts, mixed by one softmax gate per task: ``r_shared_t`` ``[B, H]``;
- **scenario**: ``num_scenario_experts`` experts per scenario, mixed by that scenario's own gate; row ``b``
  reads its scenario's mixture: ``r_scenario`` ``[B, H]``;
- **task**: ``num_task_experts`` experts per task, mixed by that task's own gate: ``r_task_t`` ``[B, H]``.

The gates are the first fusion level (within a module); the second fuses the modules per task with
learned weights, ``z_t = sum_m softmax(alpha_t)_m r_m`` over the three modules, and task ``t``'s tower reads
``z_t``.

Choices the paper leaves open or that differ: the fusion weights ``alpha`` ``[T, 3]`` (start equal) are
trained with the model by the ordinary gradient, not searched by a separate bi-level (AutoML) optimization;
the module outputs are fused as they are (no representation is subtracted from another); every scenario's
experts are evaluated on every row (``S`` passes of the scenario module), which keeps the module one batched
product and exportable. Sequences, if the schema has them, are pooled into extra fields.

Shared: the embeddings, the shared experts. Scenario-specific: the scenario experts and gates.
Task-specific: the shared experts' gates, the task experts and gates, the fusion weights, the towers.
Needs a dataset with a scenario.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._fields import per_scenario, scenario_field, scenario_input
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, GroupGates, mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes

MODULES = ("shared", "scenario", "task")  # the expert modules, in the fusion weights' order


class GroupedExperts(nn.Module):
    """``n_groups`` groups of ``per_group`` experts, each group mixed by its own softmax gate:
    ``[B, in] -> [n_groups, B, H]``."""

    def __init__(self, n_groups: int, per_group: int, in_dim: int, sizes: Layers, dropout: float) -> None:
        super().__init__()
        self.n_groups, self.per_group = n_groups, per_group
        self.experts = ParallelMLP(n_groups * per_group, in_dim, sizes, dropout)
        self.gates = GroupGates(n_groups, in_dim, per_group)
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.experts(x).view(self.n_groups, self.per_group, x.shape[0], -1)  # [G, E, B, H]
        return mix(experts, self.gates(x))  # [G, B, H]


@register_model("m3oe")
class M3oE(MultiTaskModel):
    needs_scenario = True

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_shared_experts: Count = 4,
        num_scenario_experts: Count = 2,
        num_task_experts: Count = 2,
        expert_sizes: Layers = (128, 64),
        tower_sizes: Sizes = (32,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        _, S = scenario_field(schema, "m3oe")
        T = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.shared_experts = ParallelMLP(num_shared_experts, in_dim, expert_sizes, dropout)
        self.shared_gates = Gates(in_dim, T, num_shared_experts)
        self.scenario_module = GroupedExperts(S, num_scenario_experts, in_dim, expert_sizes, dropout)
        self.task_module = GroupedExperts(T, num_task_experts, in_dim, expert_sizes, dropout)
        self.fusion = nn.Parameter(torch.zeros(T, len(MODULES)))  # alpha
        self.towers = TaskTowers(T, self.shared_experts.out_dim, tower_sizes, dropout)

    def module_outputs(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """Each module's representation per task ``[3, T, B, H]`` (modules in :data:`MODULES` order; the
        scenario module's is the same for every task) from the input ``[B, in]`` and scenario ids ``[B]``."""
        shared = mix(self.shared_experts(x), self.shared_gates(x))  # [T, B, H]
        own_scenario = per_scenario(self.scenario_module(x), scenario)  # [B, H]
        return torch.stack([shared, own_scenario.expand_as(shared), self.task_module(x)])

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        scenario = scenario_input(features, "m3oe")
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        weights = torch.softmax(self.fusion, dim=-1)  # [T, 3]
        fused = torch.einsum("tm,mtbh->tbh", weights, self.module_outputs(x, scenario))  # [T, B, H]
        logits = self.towers(fused)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared experts' last layer (every task's gate mixes them)."""
        return list(self.shared_experts.last_layer().parameters())
