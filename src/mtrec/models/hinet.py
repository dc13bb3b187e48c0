"""HiNet (Zhou et al., SIGIR 2023, "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical
Information Extraction"): a scenario extraction layer, then a task extraction layer.

- **Scenario extraction layer**, over the concatenated embeddings ``x`` ``[B, F*d]``:

  - scenario-shared experts (``num_shared_experts``), mixed for row ``b`` by its scenario's softmax gate
    (one gate per scenario, :class:`~mtrec.nn.experts.Gates`): ``g_shared`` ``[B, H]``;
  - one scenario-specific expert per scenario; row ``b`` reads its own scenario's: ``g_own`` ``[B, H]``;
  - the scenario-aware attentive network (SAN): the other scenarios' specific experts, weighted by an
    attention between scenario embeddings, ``a_{s,s'} = softmax_{s' != s}(<q(e_s), k(e_s')> / sqrt(d))``:
    ``g_san = sum_{s' != s} a_{s,s'} E_{s'}(x)`` ``[B, H]``.

  The scenario representation is ``[g_shared ++ g_own ++ g_san]`` ``[B, 3H]``.
- **Task extraction layer**: a CGC level (:func:`~mtrec.nn.experts.task_levels`, one level) over the
  scenario representation: ``num_task_experts`` experts per task and ``num_task_shared_experts`` shared,
  task ``t``'s gate mixing its own and the shared ones; then one tower per task.

Choices the paper leaves open: the SAN's scenario embeddings are a table of its own (``embedding_dim``
wide; the scenario is also an ordinary input field), with query and key maps ``q``, ``k`` linear; the
padding and out-of-vocabulary scenario ids have experts and gates like the others (they are never the
scenario of a prepared row, but they can be attended to); every scenario's specific expert is evaluated on
every row (``S`` expert passes), which keeps the layer one batched product and exportable. Sequences, if
the schema has them, are pooled into extra fields.

Shared: the embeddings, the scenario-shared experts, the task level's shared experts. Scenario-specific:
the shared experts' gates, the specific experts. Needs a dataset with a scenario.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._fields import per_scenario, scenario_field, scenario_input
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, mix, task_levels
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.nn.recording import EXPERT_WEIGHTS, RecordingBlock
from mtrec.typed import Count, Dropout, Layers, Sizes


class ScenarioAttention(RecordingBlock):
    """HiNet's SAN weights: ``scenario ids [B] -> [B, S]``, each row a softmax over the other scenarios
    (0 on its own) of the scaled dot product between its scenario's query and each scenario's key; recorded
    as one gate's weights over the scenario experts ``[1, B, S]``."""

    def __init__(self, n_scenarios: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_scenarios, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, scenario: torch.Tensor) -> torch.Tensor:
        table = self.embedding.weight  # [S, d]
        scores = self.query(table[scenario]) @ self.key(table).t() * self.scale  # [B, S]
        own = nn.functional.one_hot(scenario, table.shape[0]).bool()
        weights = torch.softmax(scores.masked_fill(own, float("-inf")), dim=-1)
        self.record(EXPERT_WEIGHTS, weights.unsqueeze(0))
        return weights


@register_model("hinet")
class HiNet(MultiTaskModel):
    needs_scenario = True

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_shared_experts: Count = 2,
        expert_sizes: Layers = (128, 64),
        num_task_experts: Count = 1,
        num_task_shared_experts: Count = 1,
        task_expert_sizes: Layers = (64,),
        tower_sizes: Sizes = (32,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        _, S = scenario_field(schema, "hinet")
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.shared_experts = ParallelMLP(num_shared_experts, in_dim, expert_sizes, dropout)
        self.shared_gates = Gates(in_dim, S, num_shared_experts)  # one gate per scenario
        self.scenario_experts = ParallelMLP(S, in_dim, expert_sizes, dropout)  # one expert per scenario
        self.attention = ScenarioAttention(S, embedding_dim)
        H = self.shared_experts.out_dim
        self.task_level = task_levels(3 * H, len(self.task_names), 1, num_task_experts, num_task_shared_experts,
                                      task_expert_sizes, sees_all=False, dropout=dropout)
        self.towers = TaskTowers(len(self.task_names), self.task_level.out_dim, tower_sizes, dropout)

    def scenario_layer(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """The scenario extraction layer: ``[g_shared ++ g_own ++ g_san]`` ``[B, 3H]`` from the input
        ``[B, in]`` and the scenario ids ``[B]``."""
        shared = per_scenario(mix(self.shared_experts(x), self.shared_gates(x)), scenario)  # [B, H]
        specific = self.scenario_experts(x)  # [S, B, H]
        own = per_scenario(specific, scenario)  # [B, H]
        others = torch.einsum("bs,sbh->bh", self.attention(scenario), specific)  # [B, H]
        return torch.cat([shared, own, others], dim=1)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        scenario = scenario_input(features, "hinet")
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(self.task_level(self.scenario_layer(x, scenario)))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of the task level's shared experts (every task's gate mixes them)."""
        return list(self.task_level.top().last_layers()[-1].parameters())
