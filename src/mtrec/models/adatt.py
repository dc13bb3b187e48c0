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
Sequences, if the schema has them, are mean-pooled into extra fields.
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
from mtrec.nn.mlp import ParallelLinear, ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, NonNegative, Sizes


class FusionLevel(nn.Module):
    """One AdaTT level: ``forward(task_inputs [B, in] or [T, B, in], shared_input [B, in] or None) ->
    (f_t [T, B, H], f_s [B, H] or None)``; ``f_s`` only with ``shared_fusion`` (levels below the last)."""

    residual_weights: torch.Tensor

    def __init__(
        self, in_dim: int, num_tasks: int, num_task_experts: int, num_shared_experts: int,
        expert_sizes: Sequence[int], shared_fusion: bool, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_tasks < 1 or num_task_experts < 1 or num_shared_experts < 0:
            raise ValueError(f"AdaTT level: need num_tasks >= 1, num_task_experts >= 1, num_shared_experts >= 0; "
                             f"got {num_tasks}, {num_task_experts}, {num_shared_experts}")
        self.num_tasks, self.num_task_experts = num_tasks, num_task_experts
        n_all = num_tasks * num_task_experts + num_shared_experts
        self.task_experts = ParallelMLP(num_tasks * num_task_experts, in_dim, expert_sizes, dropout)
        self.shared_experts = ParallelMLP(num_shared_experts, in_dim, expert_sizes, dropout) \
            if num_shared_experts else None
        self.task_gates = GroupGates(num_tasks, in_dim, n_all)  # W_t
        self.shared_gate = Gates(in_dim, 1, n_all) if shared_fusion else None  # W_s
        residual = torch.ones(num_tasks, num_task_experts)  # v_t
        if num_task_experts > 1:
            self.residual_weights = nn.Parameter(residual)
        else:
            self.register_buffer("residual_weights", residual)
        self.out_dim = self.task_experts.out_dim

    def experts(
        self, task_inputs: torch.Tensor, shared_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task ``t``'s own expert outputs ``[T, m, B, H]`` and every expert's ``[T*m + s, B, H]``."""
        T, m = self.num_tasks, self.num_task_experts
        expert_in = task_inputs.repeat_interleave(m, dim=0) if task_inputs.dim() == 3 else task_inputs
        own = self.task_experts(expert_in)  # [T*m, B, H]
        everything = own
        if self.shared_experts is not None:
            assert shared_input is not None
            everything = torch.cat([own, self.shared_experts(shared_input)])
        return own.view(T, m, *own.shape[1:]), everything  # [T, m, B, H], [T*m+s, B, H]

    def residual(self, own: torch.Tensor) -> torch.Tensor:
        """The linear residual over each task's own experts: ``sum_j v_tj E_tj`` ``[T, B, H]``."""
        return torch.einsum("tm,tmbh->tbh", self.residual_weights, own)

    def forward(
        self, task_inputs: torch.Tensor, shared_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared_in = shared_input if shared_input is not None or task_inputs.dim() == 3 else task_inputs
        if shared_in is None and (self.shared_experts is not None or self.shared_gate is not None):
            raise ValueError("AdaTT level: per-task inputs need a shared input for the shared experts and gate")
        own, everything = self.experts(task_inputs, shared_in)
        fused = mix(everything, self.task_gates(task_inputs)) + self.residual(own)  # [T, B, H]
        if self.shared_gate is None or shared_in is None:
            return fused, None
        return fused, mix(everything, self.shared_gate(shared_in)).squeeze(0)  # [B, H]

    def last_layers(self) -> list[ParallelLinear]:
        """The last layer of every expert of the level (each is read by every task's gate)."""
        groups = [self.task_experts] + ([self.shared_experts] if self.shared_experts is not None else [])
        return [g.last_layer() for g in groups]


@register_model("adatt")
class AdaTT(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_levels: Count = 2,
        num_task_experts: Count = 2,
        num_shared_experts: NonNegative = 1,
        expert_sizes: Sizes = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        if num_levels < 1:
            raise ValueError(f"adatt: num_levels must be >= 1, got {num_levels}")
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        dim = self.embedding.num_all_fields * embedding_dim
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            fusion = FusionLevel(dim, len(self.task_names), num_task_experts, num_shared_experts, expert_sizes,
                                 shared_fusion=level < num_levels - 1 and num_shared_experts > 0, dropout=dropout)
            self.levels.append(fusion)
            dim = fusion.out_dim
        self.towers = TaskTowers(len(self.task_names), dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        task_x: torch.Tensor = x
        shared_x: torch.Tensor | None = x
        for level in self.levels:
            task_x, shared_x = level(task_x, shared_x)  # [T, B, H], [B, H] or None
        logits = self.towers(task_x)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last level's experts' last layers: every task's fusion gate reads every expert."""
        last: FusionLevel = self.levels[-1]  # type: ignore[assignment]
        return [p for layer in last.last_layers() for p in layer.parameters()]
