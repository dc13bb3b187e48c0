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
experts, gate and tower. Sequences, if the schema has them, are mean-pooled into extra fields (of every
table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, GroupGates, mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Sizes


class STEMLevel(nn.Module):
    """One level: ``forward(task_inputs [T, B, in], shared_input [B, in]) -> (h_t [T, B, H], shared
    output [B, H] or None)``; the shared output only with ``shared_gate``."""

    own_or_shared: torch.Tensor

    def __init__(
        self, in_dim: int, num_tasks: int, num_task_experts: int, num_shared_experts: int,
        expert_sizes: Sequence[int], shared_gate: bool, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(num_tasks, num_task_experts, num_shared_experts) < 1:
            raise ValueError(f"stem: need num_tasks, num_task_experts and num_shared_experts >= 1; "
                             f"got {num_tasks}, {num_task_experts}, {num_shared_experts}")
        self.num_task_experts = num_task_experts
        n_all = num_tasks * num_task_experts + num_shared_experts
        self.task_experts = ParallelMLP(num_tasks * num_task_experts, in_dim, expert_sizes, dropout)
        self.shared_experts = ParallelMLP(num_shared_experts, in_dim, expert_sizes, dropout)
        self.task_gates = GroupGates(num_tasks, in_dim, n_all)
        self.shared_gate = Gates(in_dim, 1, n_all) if shared_gate else None
        owner = torch.arange(num_tasks).repeat_interleave(num_task_experts)  # the task of each task expert
        own = owner.unsqueeze(0) == torch.arange(num_tasks).unsqueeze(1)  # [T, T*m]
        shared = torch.ones(num_tasks, num_shared_experts, dtype=torch.bool)
        self.register_buffer("own_or_shared", torch.cat([own, shared], dim=1), persistent=False)  # [T, n_all]
        self.out_dim = self.task_experts.out_dim

    def forward(
        self, task_inputs: torch.Tensor, shared_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        own = self.task_experts(task_inputs.repeat_interleave(self.num_task_experts, dim=0))  # [T*m, B, H]
        experts = torch.cat([own, self.shared_experts(shared_input)])  # [n_all, B, H]
        keep = self.own_or_shared[:, :, None, None]  # [T, n_all, 1, 1]
        per_task = torch.where(keep, experts.unsqueeze(0), experts.detach().unsqueeze(0))  # [T, n_all, B, H]
        task_outputs = mix(per_task, self.task_gates(task_inputs))  # [T, B, H]
        if self.shared_gate is None:
            return task_outputs, None
        return task_outputs, mix(experts, self.shared_gate(shared_input)).squeeze(0)  # [B, H]


@register_model("stem")
class STEM(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_levels: Count = 1,
        num_task_experts: Count = 1,
        num_shared_experts: Count = 1,
        expert_sizes: Sizes = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        if num_levels < 1:
            raise ValueError(f"stem: num_levels must be >= 1, got {num_levels}")
        T = len(self.task_names)
        self.embedding_dim = embedding_dim
        # T task tables, then the shared one
        self.embedding = FeatureEmbedding(schema, (T + 1) * embedding_dim, sequence_pooling)
        dim = self.embedding.num_all_fields * embedding_dim
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layer = STEMLevel(dim, T, num_task_experts, num_shared_experts, expert_sizes,
                              shared_gate=level < num_levels - 1, dropout=dropout)
            self.levels.append(layer)
            dim = layer.out_dim
        self.towers = TaskTowers(T, dim, tower_sizes, dropout)

    def tables(self, features: Features) -> torch.Tensor:
        """Every table's flattened field embeddings: ``[T+1, B, F*d]`` (block ``T`` the shared table's)."""
        fields = self.embedding.all_fields(features)  # [B, F, (T+1)*d]
        B, F = fields.shape[0], fields.shape[1]
        blocks = fields.view(B, F, -1, self.embedding_dim).permute(2, 0, 1, 3)  # [T+1, B, F, d]
        return blocks.reshape(-1, B, F * self.embedding_dim)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        tables = self.tables(features)  # [T+1, B, F*d]
        task_x, shared_x = tables[:-1], tables[-1]  # [T, B, F*d], [B, F*d]
        for level in self.levels:
            task_x, next_shared = level(task_x, shared_x)
            shared_x = next_shared if next_shared is not None else shared_x
        logits = self.towers(task_x)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last level's shared experts' last layer (every task trains it)."""
        last: STEMLevel = self.levels[-1]  # type: ignore[assignment]
        return list(last.shared_experts.last_layer().parameters())
