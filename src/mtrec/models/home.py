"""HoME, the Hierarchy of Multi-gate Experts (Wang et al., 2024, Kuaishou, arXiv 2408.05430, "HoME:
Hierarchy of Multi-Gate Experts for Multi-Task Learning at Kuaishou").

Tasks are partitioned into task groups (``task_groups``: lists of task names, default one group per
task); ``v`` is the flattened field embeddings ``[B, F*d]``. Two levels of
:class:`~mtrec.nn.experts.ExpertLevel` (every expert normalised, ``Swish(BatchNorm(xW+b))`` per layer,
and reading its input through its own low-rank feature gate ``x * 2 sigmoid(x A B)``; the layouts are
:func:`home_layouts`):

- **meta level**, input ``v``: ``num_global_experts`` global experts and ``num_group_experts`` experts per
  group. The hierarchy mask lets group ``g``'s gate mix the global experts and group ``g``'s own, giving
  ``h_g``; a global gate mixes all of them, giving ``h_0``.
- **task level**, inputs ``h_0, h_1 .. h_G``: global experts read ``h_0``, group ``g``'s experts read
  ``h_g``, and ``num_task_experts`` experts per task read their group's ``h_g``. Task ``t`` (in group
  ``g``) has a gate reading ``h_g`` over the global experts, group ``g``'s and task ``t``'s own; every
  other group's and task's experts are outside its gate (the hierarchy mask). With ``w_t`` its masked softmax
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
from mtrec.nn.experts import ExpertLevel, LevelLayout
from mtrec.nn.mlp import ParallelLinear, TaskTowers
from mtrec.typed import Count, Layers, Sizes


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


def home_layouts(group: list[int], num_group_experts: int, num_task_experts: int,
                 num_global_experts: int) -> tuple[LevelLayout, LevelLayout]:
    """The meta and task levels' layouts for tasks in groups ``group`` (the group of each task).

    Meta level, one input ``v``: ``nm`` experts per group, ``ng`` global (shared) experts; group ``g``'s
    gate mixes group ``g``'s experts and the global ones. Task level, inputs ``h_1 .. h_G``: group ``g``'s
    ``nm`` experts read ``h_g``, task ``t``'s ``nt`` experts read its group's ``h_g``, the global ones read
    ``h_0``; task ``t``'s gate reads its group's ``h_g`` and mixes its group's, its own and the global
    experts."""
    G, nm, nt, ng = max(group) + 1, num_group_experts, num_task_experts, num_global_experts
    group_experts = [tuple(range(g * nm, (g + 1) * nm)) for g in range(G)]
    meta = LevelLayout(
        expert_inputs=(0,) * (G * nm), num_shared_experts=ng, gate_inputs=(0,) * G,
        visible=tuple(own + tuple(range(G * nm, G * nm + ng)) for own in group_experts), own=tuple(group_experts),
    )
    task_experts = [tuple(range(G * nm + t * nt, G * nm + (t + 1) * nt)) for t in range(len(group))]
    global_experts = tuple(range(G * nm + len(group) * nt, G * nm + len(group) * nt + ng))
    task = LevelLayout(
        expert_inputs=tuple([g for g in range(G) for _ in range(nm)] + [g for g in group for _ in range(nt)]),
        num_shared_experts=ng, gate_inputs=tuple(group),
        visible=tuple(group_experts[g] + own + global_experts for g, own in zip(group, task_experts, strict=True)),
        own=tuple(task_experts),
    )
    return meta, task


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
        expert_sizes: Layers = (256, 128),
        feature_gate_rank: Count = 8,
        tower_sizes: Sizes = (64,),
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        group = group_of_tasks(self.task_names, task_groups)
        self.register_buffer("task_group", torch.tensor(group, dtype=torch.long), persistent=False)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        meta, task = home_layouts(group, num_group_experts, num_task_experts, num_global_experts)
        self.meta = ExpertLevel(self.embedding.num_all_fields * embedding_dim, meta, expert_sizes, shared_gate=True,
                                normalized=True, feature_gate_rank=feature_gate_rank)  # its shared gate: h_0
        hidden = self.meta.out_dim
        self.task_level = ExpertLevel(hidden, task, expert_sizes, normalized=True, feature_gate_rank=feature_gate_rank)
        self.self_gates = ParallelLinear(len(group), hidden, hidden)  # W_t, b_t
        self.towers = TaskTowers(len(group), self.task_level.out_dim, tower_sizes)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        v = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        groups, h_0 = self.meta(v)  # [G, B, H]: h_1 .. h_G, [B, H]: h_0
        assert h_0 is not None
        own_group = groups[self.task_group]  # [T, B, H]: each task's h_g
        tasks, _ = self.task_level(groups, h_0)  # [T, B, H]
        tasks = tasks + torch.sigmoid(self.self_gates(own_group)) * own_group  # [T, B, H]
        logits = self.towers(tasks)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The task level's global experts' last layer (every task's gate mixes them)."""
        return list(self.task_level.last_layers()[-1].parameters())
