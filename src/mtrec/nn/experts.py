"""Mixtures of experts: softmax gates over groups of experts (MMoE, OMoE, CGC/PLE).

Experts are :class:`~mtrec.nn.mlp.ParallelMLP` groups: a group of E experts is one batched matmul per
layer, never a Python loop over expert modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.nn.mlp import ParallelLinear, ParallelMLP, run_together
from mtrec.nn.recording import EXPERT_WEIGHTS, RecordingBlock


class Gates(RecordingBlock):
    """``n_gates`` softmax gates over ``n_experts``, all reading the same input: ``[B, in] -> [n_gates, B,
    n_experts]`` (one linear layer for all gates)."""

    def __init__(self, in_dim: int, n_gates: int, n_experts: int) -> None:
        super().__init__()
        self.n_gates = n_gates
        self.n_experts = n_experts
        self.linear = nn.Linear(in_dim, n_gates * n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x).view(-1, self.n_gates, self.n_experts)  # [B, G, E]
        weights = torch.softmax(logits, dim=-1).transpose(0, 1)  # [G, B, E]
        self.record(EXPERT_WEIGHTS, weights)
        return weights


def mix(experts: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sums of expert outputs, one per gate.

    experts: ``[E, B, H]`` (every gate mixes the same experts) or ``[G, E, B, H]`` (gate g mixes its own
    group); gates: ``[G, B, E]``; returns ``[G, B, H]``.
    """
    if experts.dim() == 3:
        return torch.einsum("ebh,gbe->gbh", experts, gates)
    # per-gate groups: a broadcast product summed over E (an einsum becomes G*B tiny matmuls here)
    return (experts * gates.transpose(1, 2).unsqueeze(-1)).sum(1)  # [G, E, B, H] -> [G, B, H]


class GroupGates(RecordingBlock):
    """One softmax gate per group, each reading its own input: ``[B, in]`` (the same input for every
    group) or ``[G, B, in]`` (one input per group) ``-> [G, B, n_experts]``."""

    def __init__(self, n_groups: int, in_dim: int, n_experts: int) -> None:
        super().__init__()
        self.linear = ParallelLinear(n_groups, in_dim, n_experts)
        self.n_groups = n_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_groups, -1, -1)  # [G, B, in]
        weights = torch.softmax(self.linear(x), dim=-1)  # [G, B, E]
        self.record(EXPERT_WEIGHTS, weights)
        return weights


class ExtractionLayer(nn.Module):
    """One extraction layer of CGC / PLE (Tang et al., RecSys 2020, "Progressive Layered Extraction").

    Every task owns ``num_task_experts`` experts; ``num_shared_experts`` experts serve all tasks. Task
    ``k``'s gate reads task ``k``'s input and mixes task ``k``'s experts with the shared experts. With
    ``shared_gate=True`` (PLE's lower levels) one more gate, reading the shared input, mixes **all**
    experts into a shared output that feeds the next level's shared experts.

    Inputs of :meth:`forward`:

    - ``task_inputs``: ``[B, in]`` (one input for every task, as at PLE's first level) or ``[T, B, in]``
      (one input per task: the previous level's task outputs, or task-specific representations such as
      DTRN's refined inputs). Task ``k``'s experts and gate read ``task_inputs[k]``.
    - ``shared_input``: ``[B, in]`` or None. The shared experts (and the shared gate) read it. When it is
      None and ``task_inputs`` is ``[B, in]``, it is ``task_inputs``; when it is None and ``task_inputs``
      is ``[T, B, in]``, the shared experts are evaluated on each task's own input (their weights are
      shared, their outputs are per task), and a shared gate is impossible (a clear error says so).

    Returns ``(task_outputs [T, B, H], shared_output [B, H] or None)``, ``H = expert_sizes[-1]``.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_task_experts: int,
        num_shared_experts: int,
        expert_sizes: Sequence[int],
        shared_gate: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("num_tasks", num_tasks), ("num_task_experts", num_task_experts),
                            ("num_shared_experts", num_shared_experts), ("expert_sizes", len(expert_sizes))):
            if value < 1:
                raise ValueError(f"ExtractionLayer: {name} must be >= 1, got {value}")
        self.num_tasks = num_tasks
        self.num_task_experts = num_task_experts
        self.num_shared_experts = num_shared_experts
        self.task_experts = ParallelMLP(num_tasks * num_task_experts, in_dim, expert_sizes, dropout)
        self.shared_experts = ParallelMLP(num_shared_experts, in_dim, expert_sizes, dropout)
        self.task_gates = GroupGates(num_tasks, in_dim, num_task_experts + num_shared_experts)
        self.shared_gate = (
            Gates(in_dim, 1, num_tasks * num_task_experts + num_shared_experts) if shared_gate else None
        )
        self.out_dim = self.task_experts.out_dim

    def forward(
        self, task_inputs: torch.Tensor, shared_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T, Et, Es = self.num_tasks, self.num_task_experts, self.num_shared_experts
        per_task = task_inputs.dim() == 3
        if per_task and task_inputs.shape[0] != T:
            raise ValueError(f"ExtractionLayer: per-task inputs must be [T={T}, B, in], got "
                             f"{tuple(task_inputs.shape)}")
        if shared_input is None and not per_task:
            shared_input = task_inputs
        if shared_input is None and self.shared_gate is not None:
            raise ValueError("ExtractionLayer with a shared gate needs shared_input when task_inputs are "
                             "per task ([T, B, in]): the shared gate has no input of its own otherwise")
        # task k's experts read task k's input
        expert_in = task_inputs.repeat_interleave(Et, dim=0) if per_task else task_inputs  # [T*Et, B, in]
        shared: torch.Tensor | None = None
        if shared_input is not None:  # every expert in one batched product per layer
            if shared_input is task_inputs:
                together = task_inputs  # [B, in]: every expert reads it
            else:
                own_in = expert_in if per_task else expert_in.unsqueeze(0).expand(T * Et, -1, -1)
                together = torch.cat([own_in, shared_input.unsqueeze(0).expand(Es, -1, -1)])  # [T*Et+Es, B, in]
            everything = run_together([self.task_experts, self.shared_experts], together)  # [T*Et+Es, B, H]
            own, shared = everything[: T * Et], everything[T * Et :]
            B, H = own.shape[1], own.shape[2]
            shared_per_task = shared.unsqueeze(0).expand(T, -1, -1, -1)  # [T, Es, B, H]
        else:  # shared weights, evaluated on each task's input
            own = self.task_experts(expert_in)  # [T*Et, B, H]
            B, H = own.shape[1], own.shape[2]
            flat = self.shared_experts(task_inputs.reshape(T * B, -1))  # [Es, T*B, H]
            shared_per_task = flat.view(Es, T, B, H).transpose(0, 1)  # [T, Es, B, H]
        experts = torch.cat([own.view(T, Et, B, H), shared_per_task], dim=1)  # [T, Et+Es, B, H]
        task_outputs = mix(experts, self.task_gates(task_inputs))  # [T, B, H]
        if self.shared_gate is None or shared is None or shared_input is None:
            return task_outputs, None
        shared_output = mix(everything, self.shared_gate(shared_input)).squeeze(0)  # [B, H]
        return task_outputs, shared_output


class ProgressiveLayers(nn.Module):
    """PLE's stack of :class:`ExtractionLayer` levels (Tang et al., RecSys 2020).

    Levels ``0 .. num_levels-2`` have a shared gate whose output feeds the next level's shared experts;
    the last level has none (only task outputs leave the stack). Level ``l+1``'s task ``k`` experts and
    gate read level ``l``'s task ``k`` output. With ``num_levels=1`` this is exactly CGC.

    ``forward(task_inputs, shared_input=None)``: ``task_inputs`` ``[B, in]`` or ``[T, B, in]``,
    ``shared_input`` ``[B, in]`` or None (see :class:`ExtractionLayer`; per-task inputs with more than
    one level need a ``shared_input``); returns the task outputs ``[T, B, H]``.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_levels: int = 2,
        num_task_experts: int = 2,
        num_shared_experts: int = 2,
        expert_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"ProgressiveLayers: num_levels must be >= 1, got {num_levels}")
        self.levels = nn.ModuleList()
        dim = in_dim
        for level in range(num_levels):
            layer = ExtractionLayer(dim, num_tasks, num_task_experts, num_shared_experts, expert_sizes,
                                    shared_gate=level < num_levels - 1, dropout=dropout)
            self.levels.append(layer)
            dim = layer.out_dim
        self.out_dim = dim

    def forward(self, task_inputs: torch.Tensor, shared_input: torch.Tensor | None = None) -> torch.Tensor:
        x: torch.Tensor = task_inputs
        shared = shared_input
        for layer in self.levels:
            x, shared = layer(x, shared)
        return x

    def last_shared_layer(self) -> nn.Module:
        """The last layer of the last level's shared experts: the top of what all tasks share (where
        GradNorm measures gradient norms)."""
        last: ExtractionLayer = self.levels[-1]  # type: ignore[assignment]
        return last.shared_experts.last_layer()
