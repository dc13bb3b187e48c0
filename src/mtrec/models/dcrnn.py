"""DCRNN (Zhou & Yu, 2023, "Deep Cross network based on RNN with partial parameter sharing").

The paper's three claims, each an option here so that it can be tested by ablation:

1. an RNN cross-processes the features, in the spirit of a cross network (the Cross-RNN cell of
   :mod:`mtrec.nn.cross`: ``c_t = x0 * (W h + b) + h``, gated, weights tied across steps, ``h_0 = x0``);
2. partial parameter sharing, between hard and soft sharing (option ``sharing``);
3. the click-to-consumption correlation is captured: tasks continue the recurrence in their declared order
   (click, then consumption), each task's recurrence starting from the previous task's final state.

Input: the F field embeddings ``[B, F, d]`` (sparse ids, dense values projected to width d, behaviour
histories pooled as ``sequence_pooling`` says: ``mean`` or DIN-style ``attention``), ``x0`` = their
concatenation ``[B, D]``, ``D = F d``.

Cross branch (``cross_axis: depth``, the recurrence over cross depth), by ``sharing``:

- ``partial`` (default). Shared: one Cross-RNN cell, run ``shared_steps`` steps from ``x0`` to
  ``h_shared``. Task-specific: a :class:`~mtrec.nn.cross.CrossTaskPart` per task (gate-bias offset, a
  low-rank adapter of rank ``adapter_rank`` on ``W h``, a LayerNorm if ``task_norm``). Task 1 continues
  the **same** cell for ``task_steps`` steps from ``h_shared`` with its part; task k continues from
  task k-1's final state with its own part. So the first task's part also shapes every later task's state.
  ``pass_state=False`` (the ablation of claim 3): every task continues from ``h_shared`` instead.
- ``hard``. One shared cell run ``shared_steps + task_steps`` steps (the same depth); every task reads the
  final state. No task-specific cross parameters.
- ``none``. One separate cell per task (T cells batched as one product), each run
  ``shared_steps + task_steps`` steps from ``x0``; no cross parameter is shared, no state is passed on.

``cross_axis: fields`` reads the recurrence as a GRU over the F field embeddings instead (width
``field_rnn_dim``). ``partial``: a shared first GRU layer, a task-specific second layer per task, task k's
second layer starting from task k-1's final state (from zero with ``pass_state=False``); ``hard``: both
layers shared; ``none``: a two-layer GRU per task. (``shared_steps``, ``task_steps``, ``rank``,
``adapter_rank``, ``task_norm`` apply to the depth axis only.)

Beside the cross branch, a deep branch: a shared MLP (``deep_sizes``) on ``x0`` and task-specific upper
layers (``deep_task_sizes``, one group per task, batched). Each task's tower (``tower_sizes``, batched)
reads its cross state concatenated with its deep output and returns the task's logit. The embeddings are
shared by all tasks in every mode; ``sharing`` changes the cross branch only.

The click-to-consumption chain can also be learned in the entire space like ESMM's: that is the
objective's (``train.objective: entire_space``), for this model as for any other.

Defaults: ``pass_state=True``, ``shared_steps=2``, ``task_steps=1``, ``rank=None`` (full W), ``adapter_rank=4``,
``task_norm=False``, ``deep_sizes=(256, 128)``, ``deep_task_sizes=(64,)``, ``tower_sizes=(64,)``,
``field_rnn_dim=64``. A one-seed sweep on synthetic ``conflict`` (100k rows, 6
epochs; ``benchmarks/dcrnn_study.py sweep``, ``docs/dcrnn.md``) moved test AUC by at most 0.004 for any
single change (steps 1+1 or 3+2, rank 16, adapter rank 0 or 16, task LayerNorm, the fields axis, no deep
task layers), within about 1.5 seed standard deviations: no option earned a change, so the defaults keep
the specification's shape (two shared steps, one step per task, a full W while D stays a few hundred; set
``rank`` when D = F d grows into the thousands).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import ModelConfigError, register_model, register_variant
from mtrec.models.base import MultiTaskModel
from mtrec.nn.cross import CrossRNNCell, CrossTaskPart, FieldGRU
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP, ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, NonNegative, Sizes

Sharing = Literal["partial", "hard", "none"]
CrossAxis = Literal["depth", "fields"]


class DepthCross(nn.Module):
    """The Cross-RNN branch over cross depth: ``x0 [B, D] -> task states [T, B, D]``."""

    def __init__(
        self, dim: int, n_tasks: int, sharing: Sharing, shared_steps: int, task_steps: int,
        rank: int | None, adapter_rank: int, task_norm: bool, pass_state: bool = True,
    ) -> None:
        super().__init__()
        self.sharing, self.n_tasks, self.pass_state = sharing, n_tasks, pass_state
        self.shared_steps, self.task_steps = shared_steps, task_steps
        self.cell = CrossRNNCell(dim, rank, n=n_tasks if sharing == "none" else 1)
        self.parts = nn.ModuleList(
            CrossTaskPart(dim, adapter_rank, task_norm) for _ in range(n_tasks if sharing == "partial" else 0)
        )
        self.out_dim = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        depth = self.shared_steps + self.task_steps
        if self.sharing == "none":
            return self.cell(x0, depth)  # [T, B, D], one cell per task
        if self.sharing == "hard":
            return self.cell(x0, depth).expand(self.n_tasks, -1, -1)  # [1, B, D] -> [T, B, D]
        gate_x0 = self.cell.gate_input(x0)  # [1, B, D], reused by every step
        h_shared = h = self.cell(x0, self.shared_steps, gate_x0=gate_x0)  # [1, B, D]
        states = []
        for part in self.parts:  # task order: each continues from the previous task's final state
            h = self.cell(x0, self.task_steps, h=h if self.pass_state else h_shared, part=part, gate_x0=gate_x0)
            states.append(h[0])
        return torch.stack(states)  # [T, B, D]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [] if self.sharing == "none" else list(self.cell.parameters())


class FieldCross(nn.Module):
    """The ``cross_axis: fields`` branch: GRUs over the field axis, ``[B, F, d] -> task states [T, B, H]``."""

    def __init__(self, field_dim: int, hidden: int, n_tasks: int, sharing: Sharing, pass_state: bool = True) -> None:
        super().__init__()
        self.sharing, self.n_tasks, self.pass_state = sharing, n_tasks, pass_state
        if sharing == "none":
            self.shared = None
            self.task_layers = nn.ModuleList(FieldGRU(field_dim, hidden, num_layers=2) for _ in range(n_tasks))
        else:
            self.shared = FieldGRU(field_dim, hidden, num_layers=2 if sharing == "hard" else 1)
            self.task_layers = nn.ModuleList(
                FieldGRU(hidden, hidden) for _ in range(n_tasks if sharing == "partial" else 0)
            )
        self.out_dim = hidden

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        if self.shared is None:
            return torch.stack([layer(fields)[1] for layer in self.task_layers])  # [T, B, H]
        outputs, last = self.shared(fields)  # [B, F, H], [B, H]
        if self.sharing == "hard":
            return last.expand(self.n_tasks, -1, -1)  # [T, B, H]
        states = []
        h: torch.Tensor | None = None
        for layer in self.task_layers:  # task order: each starts from the previous task's final state
            h = layer(outputs, h0=h if self.pass_state else None)[1]
            states.append(h)
        return torch.stack(states)  # [T, B, H]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [] if self.shared is None else list(self.shared.parameters())


@register_model("dcrnn")
class DCRNN(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        sharing: Sharing = "partial",
        cross_axis: CrossAxis = "depth",
        shared_steps: NonNegative = 2,
        task_steps: NonNegative = 1,
        rank: Count | None = None,
        adapter_rank: NonNegative = 4,
        task_norm: bool = False,
        field_rnn_dim: Count = 64,
        deep_sizes: Sizes = (256, 128),
        deep_task_sizes: Layers = (64,),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
        pass_state: bool = True,
    ) -> None:
        super().__init__(schema)
        if shared_steps + task_steps < 1:  # (each >= 0: checked by the registry, from the signature)
            raise ModelConfigError(
                f"dcrnn: shared_steps and task_steps need at least one step in all, "
                f"got shared_steps={shared_steps}, task_steps={task_steps}"
            )
        if sharing == "partial" and cross_axis == "depth" and task_steps < 1:
            raise ModelConfigError("dcrnn: sharing 'partial' needs task_steps >= 1 (the task-specific steps)")
        n_tasks = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        x0_dim = self.embedding.num_all_fields * embedding_dim
        self.cross: DepthCross | FieldCross
        if cross_axis == "depth":
            try:
                self.cross = DepthCross(
                    x0_dim, n_tasks, sharing, shared_steps, task_steps, rank, adapter_rank, task_norm, pass_state
                )
            except ValueError as exc:
                raise ModelConfigError(f"dcrnn: {exc}") from None
        else:
            self.cross = FieldCross(embedding_dim, field_rnn_dim, n_tasks, sharing, pass_state)
        self.deep_shared = MLP(x0_dim, deep_sizes, dropout)
        self.deep_tasks = ParallelMLP(n_tasks, self.deep_shared.out_dim, deep_task_sizes, dropout)
        self.towers = TaskTowers(n_tasks, self.cross.out_dim + self.deep_tasks.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        fields = self.embedding.all_fields(features)  # [B, F, d]
        x0 = fields.flatten(1)  # [B, D]
        cross = self.cross(x0 if isinstance(self.cross, DepthCross) else fields)  # [T, B, H_cross]
        deep = self.deep_tasks(self.deep_shared(x0))  # [T, B, H_deep]
        logits = self.towers(torch.cat([cross, deep], dim=-1))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Embeddings, the shared cross parameters (none under ``sharing: none``), the shared deep layers."""
        return [*super().shared_parameters(), *self.cross.shared_parameters(), *self.deep_shared.parameters()]


register_variant("dcrnn_hard", DCRNN, sharing="hard")  # every task reads the shared cross state
