"""HoME, the Hierarchy of Multi-gate Experts (Wang et al., 2024, Kuaishou, arXiv 2408.05430, "HoME:
Hierarchy of Multi-Gate Experts for Multi-Task Learning at Kuaishou").

Tasks are partitioned into task groups (``task_groups``: lists of task names, default one group per
task); ``v`` is the flattened field embeddings ``[B, F*d]``. Two levels of
:class:`~mtrec.nn.masked_experts.MaskedExpertLevel` (every expert normalised, ``Swish(BatchNorm(xW+b))``
per layer, and reading its input through its own low-rank feature gate ``x * 2 sigmoid(x A B)``):

- **meta level**, input ``v``: ``num_global_experts`` global experts and ``num_group_experts`` experts per
  group. The hierarchy mask lets group ``g``'s gate mix the global experts and group ``g``'s own, giving
  ``h_g``; a global gate mixes all of them, giving ``h_0``.
- **task level**, inputs ``h_0, h_1 .. h_G``: global experts read ``h_0``, group ``g``'s experts read
  ``h_g``, and ``num_task_experts`` experts per task read their group's ``h_g``. Task ``t`` (in group
  ``g``) has a gate reading ``h_g`` over the global experts, group ``g``'s and task ``t``'s own; every
  other group's and task's experts are masked out (weight exactly 0). With ``w_t`` its masked softmax
  weights over the allowed experts ``E_i``, task ``t``'s representation, with the self-gate residual
  from the level below, is

      o_t = sum_i w_ti E_i(h_g)  +  sigmoid(W_t h_g + b_t) * h_g

  and its tower reads ``o_t``.

Shared: the embeddings, the global experts and the global gate. Group-specific: each group's experts and
gate at the meta level, and its experts at the task level. Task-specific: each task's experts, gate,
self-gate and tower. Sequences, if the schema has them, are mean-pooled into extra fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError, register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.masked_experts import MaskedExpertLevel
from mtrec.nn.mlp import ParallelLinear, TaskTowers
from mtrec.typed import Count, Sizes


def group_of_tasks(task_names: list[str], task_groups: Sequence[Sequence[str]] | None) -> list[int]:
    """The group index of each task; every task in exactly one group (the error names what is wrong)."""
    groups = [[t] for t in task_names] if task_groups is None else [list(g) for g in task_groups]
    members = [t for g in groups for t in g]
    missing = [t for t in task_names if t not in members]
    unknown = [t for t in members if t not in task_names]
    repeated = sorted({t for t in members if members.count(t) > 1})
    if missing or unknown or repeated or any(not g for g in groups):
        raise ModelConfigError(f"home: task_groups must put every task in exactly one non-empty group; "
                               f"missing {missing}, unknown {unknown}, repeated {repeated}; tasks: {task_names}")
    return [next(i for i, g in enumerate(groups) if t in g) for t in task_names]


def _allow(rows: int, cols: int) -> torch.Tensor:
    return torch.zeros(rows, cols, dtype=torch.bool)


@register_model("home")
class HoME(MultiTaskModel):
    task_group: torch.Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        task_groups: Sequence[Sequence[str]] | None = None,
        num_global_experts: Count = 1,
        num_group_experts: Count = 1,
        num_task_experts: Count = 1,
        expert_sizes: Sizes = (256, 128),
        feature_gate_rank: Count = 8,
        tower_sizes: Sizes = (64,),
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        if min(num_global_experts, num_group_experts, num_task_experts) < 1:
            raise ModelConfigError("home: num_global_experts, num_group_experts and num_task_experts must be >= 1")
        group = group_of_tasks(self.task_names, task_groups)
        T, G, ng, nm, nt = len(group), max(group) + 1, num_global_experts, num_group_experts, num_task_experts
        self.register_buffer("task_group", torch.tensor(group, dtype=torch.long) + 1, persistent=False)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim

        # meta level: experts [global (ng), group 0 (nm), group 1 (nm), ...]; gates [global, group 0, ...]
        meta_mask = _allow(G + 1, ng + G * nm)
        meta_mask[:, :ng] = True
        meta_mask[0] = True
        for g in range(G):
            meta_mask[g + 1, ng + g * nm: ng + (g + 1) * nm] = True
        self.meta = MaskedExpertLevel(in_dim, ng, [0] * (G * nm), [0] * (G + 1), meta_mask, expert_sizes,
                                      feature_gate_rank)
        hidden = self.meta.out_dim

        # task level, inputs [h_0, h_1 .. h_G]: experts [global, group experts by group, task experts by task]
        task_mask = _allow(T, ng + G * nm + T * nt)
        task_mask[:, :ng] = True
        for t, g in enumerate(group):
            task_mask[t, ng + g * nm: ng + (g + 1) * nm] = True
            start = ng + G * nm + t * nt
            task_mask[t, start: start + nt] = True
        local = [g + 1 for g in range(G) for _ in range(nm)] + [g + 1 for g in group for _ in range(nt)]
        self.task_level = MaskedExpertLevel(hidden, ng, local, [g + 1 for g in group], task_mask, expert_sizes,
                                            feature_gate_rank)
        self.self_gates = ParallelLinear(T, hidden, hidden)  # W_t, b_t
        self.towers = TaskTowers(T, self.task_level.out_dim, tower_sizes)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        v = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        meta = self.meta(v.unsqueeze(0))  # [G+1, B, H]: h_0, h_1 .. h_G
        own_group = meta[self.task_group]  # [T, B, H]: each task's h_g
        tasks = self.task_level(meta) + torch.sigmoid(self.self_gates(own_group)) * own_group  # [T, B, H]
        logits = self.towers(tasks)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The task level's global experts' last layer (every task's gate mixes them)."""
        return list(self.task_level.global_experts.last_layer().parameters())
