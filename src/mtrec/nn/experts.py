"""Mixtures of experts: softmax gates over groups of experts.

- :class:`Gates` / :class:`GroupGates`: the softmax gates every gated model uses (MMoE, OMoE, and each
  :class:`ExpertLevel`), :func:`mix`: their gate-weighted sums.
- :class:`ExpertLevel`: one level of task and shared experts mixed by gates, each gate seeing the experts
  its :class:`LevelLayout` names; CGC/PLE, AdaTT, STEM-Net and HoME are compositions of it
  (:class:`LevelStack`, :func:`task_levels`, :class:`ProgressiveLayers`).

Experts are :class:`~mtrec.nn.mlp.ParallelMLP` groups: a group of E experts is one batched matmul per
layer, never a Python loop over expert modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtrec.nn.gating import ScaledSigmoidGates
from mtrec.nn.mlp import ParallelLinear, ParallelMLP, run_together
from mtrec.nn.normalized import NormalizedParallelMLP
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
    group) or ``[G, B, in]`` (one input per group) ``-> [G, B, V]``.

    ``visible`` ``[G, V]`` (optional): gate ``g`` mixes only the experts ``visible[g]`` of ``n_experts``,
    and its weights are over those V (without it, V = ``n_experts``). The weights are recorded over all
    ``n_experts`` (0 for an expert a gate does not see), so a reader sees every gate of a level on one
    axis.
    """

    visible: torch.Tensor | None

    def __init__(self, n_groups: int, in_dim: int, n_experts: int, visible: torch.Tensor | None = None) -> None:
        super().__init__()
        self.linear = ParallelLinear(n_groups, in_dim, n_experts if visible is None else visible.shape[1])
        self.n_groups = n_groups
        self.n_experts = n_experts
        self.register_buffer("visible", visible, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_groups, -1, -1)  # [G, B, in]
        weights = torch.softmax(self.linear(x), dim=-1)  # [G, B, V]
        if self._recording is not None:
            self.record(EXPERT_WEIGHTS, self.over_all_experts(weights))
        return weights

    def over_all_experts(self, weights: torch.Tensor) -> torch.Tensor:
        """Weights over the visible experts ``[G, B, V]`` spread over all of them ``[G, B, n_experts]``."""
        if self.visible is None:
            return weights
        index = self.visible.unsqueeze(1).expand(-1, weights.shape[1], -1)  # [G, B, V]
        return weights.new_zeros(*weights.shape[:2], self.n_experts).scatter(2, index, weights)


@dataclass(frozen=True)
class LevelLayout:
    """Who reads what in an :class:`ExpertLevel`.

    Experts are numbered task experts first (``len(expert_inputs)`` of them), then the
    ``num_shared_experts`` shared ones. Task expert ``j`` reads input ``expert_inputs[j]``; gate ``g``
    reads input ``gate_inputs[g]`` and mixes the experts ``visible[g]`` (every gate sees as many experts,
    so the gates are one batched product); ``own[g]`` are gate ``g``'s own task experts (AdaTT's residual,
    and the experts STEM-Net's gate trains).
    """

    expert_inputs: tuple[int, ...]
    num_shared_experts: int
    gate_inputs: tuple[int, ...]
    visible: tuple[tuple[int, ...], ...]
    own: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        n_all = len(self.expert_inputs) + self.num_shared_experts
        gates = len(self.gate_inputs)
        seen = {len(v) for v in self.visible}
        if not self.expert_inputs or self.num_shared_experts < 0 or gates < 1 or len(seen) != 1 or 0 in seen:
            raise ValueError(f"expert level: need task experts, gates and the same non-zero number of visible "
                             f"experts per gate; got {len(self.expert_inputs)} task experts, {gates} gates, "
                             f"visible counts {sorted(seen)}")
        if len(self.visible) != gates or len(self.own) != gates:
            raise ValueError(f"expert level: visible and own need one row per gate ({gates})")
        if any(not 0 <= e < n_all for row in self.visible for e in row) or \
                any(not 0 <= e < len(self.expert_inputs) for row in self.own for e in row):
            raise ValueError(f"expert level: an expert index is outside the level's {n_all} experts")

    @property
    def num_inputs(self) -> int:
        return max(*self.expert_inputs, *self.gate_inputs) + 1

    @property
    def sees_all(self) -> bool:
        """Every gate mixes every expert, in order."""
        everything = tuple(range(len(self.expert_inputs) + self.num_shared_experts))
        return all(row == everything for row in self.visible)


def task_layout(num_tasks: int, num_task_experts: int, num_shared_experts: int, sees_all: bool) -> LevelLayout:
    """One input, gate and ``num_task_experts`` experts per task, plus shared experts. Task ``t``'s gate
    mixes its own experts and the shared ones (CGC/PLE), or, with ``sees_all``, every expert (AdaTT,
    STEM-Net)."""
    for name, value in (("num_tasks", num_tasks), ("num_task_experts", num_task_experts)):
        if value < 1:
            raise ValueError(f"expert level: {name} must be >= 1, got {value}")
    m, n_own = num_task_experts, num_tasks * num_task_experts
    own = tuple(tuple(range(t * m, (t + 1) * m)) for t in range(num_tasks))
    shared = tuple(range(n_own, n_own + num_shared_experts))
    everything = tuple(range(n_own + num_shared_experts))
    return LevelLayout(
        expert_inputs=tuple(t for t in range(num_tasks) for _ in range(m)),
        num_shared_experts=num_shared_experts,
        gate_inputs=tuple(range(num_tasks)),
        visible=tuple(everything if sees_all else row + shared for row in own),
        own=own,
    )


class ExpertLevel(nn.Module):
    """One level of experts mixed by softmax gates: the pattern of CGC/PLE (Tang et al., RecSys 2020),
    AdaTT (Li et al., KDD 2023), STEM-Net (Su et al., AAAI 2024) and HoME (Wang et al., 2024).

    ``forward(inputs, shared_input=None) -> (gated [G, B, H], shared output [B, H] or None)``:

    - ``inputs``: ``[I, B, in]`` (task expert ``j`` reads ``inputs[layout.expert_inputs[j]]``, gate ``g``
      reads ``inputs[layout.gate_inputs[g]]``) or ``[B, in]`` (one input that every expert and gate reads).
    - ``shared_input``: ``[B, in]`` or None; the shared experts and the shared gate read it. When None and
      ``inputs`` is ``[B, in]``, it is ``inputs``; when None and ``inputs`` is ``[I, B, in]``, the shared
      experts are evaluated on each gate's own input (weights shared, outputs per gate), and a shared
      gate is impossible (a clear error says so).

    Gate ``g``'s output is ``sum_{i in visible[g]} softmax(W_g x_g)_i E_i`` (:class:`GroupGates`), and:

    - ``shared_gate``: one more gate (:class:`Gates`), reading the shared input and mixing every expert,
      gives the shared output (PLE's lower levels, AdaTT's shared fusion, HoME's global gate);
    - ``residual``: plus ``sum_j v_gj E_{own[g]_j}``, learned ``v`` (fixed to 1 for one own expert;
      AdaTT's linear residual);
    - ``stop_others``: experts that are neither the gate's own nor shared enter under stop-gradient
      (STEM-Net's all-forward, task-specific-backward gate);
    - ``normalized``: experts are ``Swish(BatchNorm(x W + b))`` per layer
      (:class:`~mtrec.nn.normalized.NormalizedParallelMLP`, HoME) instead of ReLU MLPs;
      ``feature_gate_rank`` > 0: each expert reads its input through its own low-rank feature gate
      ``x * 2 sigmoid(x A_e B_e)`` (HoME).

    Under :func:`~mtrec.nn.recording.recording` the task gates record their weights over all the level's
    experts (0 for an expert a gate does not see), the shared gate its own.
    """

    residual_weights: torch.Tensor
    trained: torch.Tensor | None

    def __init__(
        self,
        in_dim: int,
        layout: LevelLayout,
        expert_sizes: Sequence[int],
        shared_gate: bool = False,
        residual: bool = False,
        stop_others: bool = False,
        dropout: float = 0.0,
        normalized: bool = False,
        feature_gate_rank: int = 0,
    ) -> None:
        super().__init__()
        if not expert_sizes:
            raise ValueError("expert level: expert_sizes must name at least one layer")
        n_own, n_shared, gates = len(layout.expert_inputs), layout.num_shared_experts, len(layout.gate_inputs)
        self.layout = layout
        self.task_experts = self._experts(n_own, in_dim, expert_sizes, dropout, normalized, feature_gate_rank)
        self.shared_experts = self._experts(n_shared, in_dim, expert_sizes, dropout, normalized,
                                            feature_gate_rank) if n_shared else None
        visible = None if layout.sees_all else torch.tensor(layout.visible, dtype=torch.long)
        self.task_gates = GroupGates(gates, in_dim, n_own + n_shared, visible)
        self.shared_gate = Gates(in_dim, 1, n_own + n_shared) if shared_gate else None
        for name, index in (("expert_inputs", layout.expert_inputs), ("gate_inputs", layout.gate_inputs),
                            ("visible", layout.visible), ("own", layout.own)):
            self.register_buffer(f"_{name}", torch.tensor(index, dtype=torch.long), persistent=False)
        self.register_buffer("_gate_rows", torch.arange(gates).unsqueeze(1), persistent=False)  # [G, 1]
        self.sees_all = layout.sees_all
        trained: torch.Tensor | None = None  # [G, V, 1, 1]: the visible experts gate g passes gradient to
        if stop_others:
            live = [set(own) | set(range(n_own, n_own + n_shared)) for own in layout.own]
            trained = torch.tensor([[e in t for e in row] for t, row in zip(live, layout.visible, strict=True)])
            trained = trained[:, :, None, None]
        self.register_buffer("trained", trained, persistent=False)
        self.residual = residual
        if residual:
            weights = torch.ones(gates, len(layout.own[0]))  # v
            if weights.shape[1] > 1:
                self.residual_weights = nn.Parameter(weights)
            else:
                self.register_buffer("residual_weights", weights)
        self.out_dim = self.task_experts.out_dim

    @staticmethod
    def _experts(n: int, in_dim: int, sizes: Sequence[int], dropout: float, normalized: bool,
                 feature_gate_rank: int) -> ParallelMLP | NormalizedParallelMLP | FeatureGatedExperts:
        experts = NormalizedParallelMLP(n, in_dim, sizes) if normalized else ParallelMLP(n, in_dim, sizes, dropout)
        return FeatureGatedExperts(experts, in_dim, feature_gate_rank) if feature_gate_rank > 0 else experts

    def _index(self, name: str) -> torch.Tensor:
        index: torch.Tensor = getattr(self, f"_{name}")
        return index

    def _per_gate(self, experts: torch.Tensor, which: str) -> torch.Tensor:
        """Each gate's experts of the layout's ``which`` (``visible`` or ``own``) ``[G, n, B, H]``, from all
        experts' outputs ``[E, B, H]`` or ``[G, E, B, H]``."""
        index = self._index(which)  # [G, n]
        return experts[index] if experts.dim() == 3 else experts[self._index("gate_rows"), index]

    def gate_weights(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each gate's weights over its visible experts ``[G, B, V]`` (see :class:`LevelLayout`)."""
        return self.task_gates(inputs[self._index("gate_inputs")] if inputs.dim() == 3 else inputs)

    def expert_outputs(self, inputs: torch.Tensor, shared_input: torch.Tensor | None) -> torch.Tensor:
        """Every expert's output: ``[E, B, H]``, or ``[G, E, B, H]`` when the shared experts run on each
        gate's own input (``shared_input`` None with ``inputs`` ``[I, B, in]``)."""
        own_in = inputs[self._index("expert_inputs")] if inputs.dim() == 3 else inputs  # [E_own, B, in] or [B, in]
        if self.shared_experts is None:
            return _run_groups([self.task_experts], [own_in])
        if shared_input is not None:
            return _run_groups([self.task_experts, self.shared_experts], [own_in, shared_input])
        own = _run_groups([self.task_experts], [own_in])  # [E_own, B, H]
        n_in, B = inputs.shape[0], inputs.shape[1]
        flat = _run_groups([self.shared_experts], [inputs.reshape(n_in * B, -1)])  # [Es, I*B, H]
        shared = flat.view(-1, n_in, B, flat.shape[-1]).transpose(0, 1)  # [I, Es, B, H]
        own_per_gate = own.unsqueeze(0).expand(len(self.layout.gate_inputs), -1, -1, -1)  # [G, E_own, B, H]
        return torch.cat([own_per_gate, shared[self._index("gate_inputs")]], dim=1)  # [G, E, B, H]

    def forward(
        self, inputs: torch.Tensor, shared_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if inputs.dim() == 3 and inputs.shape[0] != self.layout.num_inputs:
            raise ValueError(f"expert level: inputs must be [I={self.layout.num_inputs}, B, in] or [B, in], "
                             f"got {tuple(inputs.shape)}")
        if shared_input is None and inputs.dim() == 2:
            shared_input = inputs
        if shared_input is None and self.shared_gate is not None:
            raise ValueError("expert level with a shared gate needs shared_input when inputs are per task "
                             "([I, B, in]): the shared gate has no input of its own otherwise")
        experts = self.expert_outputs(inputs, shared_input)  # [E, B, H] or [G, E, B, H]
        seen = experts if self.sees_all else self._per_gate(experts, "visible")  # [G, V, B, H]
        if self.trained is not None:
            seen = torch.where(self.trained, seen, seen.detach())  # [G, V, B, H]
        gated = mix(seen, self.gate_weights(inputs))  # [G, B, H]
        if self.residual:
            own = self._per_gate(experts, "own")  # [G, m, B, H]
            gated = gated + torch.einsum("gm,gmbh->gbh", self.residual_weights, own)
        if self.shared_gate is None or shared_input is None:
            return gated, None
        return gated, mix(experts, self.shared_gate(shared_input)).squeeze(0)  # [B, H]

    def last_layers(self) -> list[ParallelLinear]:
        """The last layer of every expert group (task experts, then shared ones)."""
        groups = [self.task_experts] + ([self.shared_experts] if self.shared_experts is not None else [])
        return [g.last_layer() for g in groups]


class FeatureGatedExperts(nn.Module):
    """Experts each reading its input through its own low-rank feature gate ``x * 2 sigmoid(x A_e B_e)``
    (HoME; :class:`~mtrec.nn.gating.ScaledSigmoidGates` without activation), so experts that share an
    input still see it differently: ``[B, in]`` or ``[n, B, in]`` ``-> [n, B, out]``."""

    def __init__(self, experts: ParallelMLP | NormalizedParallelMLP, in_dim: int, rank: int) -> None:
        super().__init__()
        self.n = experts.n
        self.experts = experts
        self.feature_gates = ScaledSigmoidGates(experts.n, in_dim, rank, in_dim, scale=2.0, activation=False)
        self.out_dim = experts.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)  # [n, B, in]
        return self.experts(x * self.feature_gates(x))

    def last_layer(self) -> ParallelLinear:
        return self.experts.last_layer()


def _run_groups(groups: Sequence[nn.Module], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Expert groups' outputs concatenated ``[sum n, B, H]``, group ``i`` reading ``inputs[i]`` (``[B, in]`` or
    ``[n_i, B, in]``); plain ReLU groups run as one batched product per layer (:func:`run_together`)."""
    if not all(isinstance(g, ParallelMLP) for g in groups):
        return torch.cat([g(x) for g, x in zip(groups, inputs, strict=True)])
    plain = [g for g in groups if isinstance(g, ParallelMLP)]
    if len(inputs) == 1 or all(x is inputs[0] for x in inputs):
        return run_together(plain, inputs[0])  # one input that every expert reads, or one group's
    expanded = [x if x.dim() == 3 else x.unsqueeze(0).expand(g.n, -1, -1) for g, x in zip(plain, inputs, strict=True)]
    return run_together(plain, torch.cat(expanded))  # [sum n, B, in]


class LevelStack(nn.ModuleList):
    """:class:`ExpertLevel` s one above the other: ``forward(inputs, shared_input=None) -> [G, B, H]``.

    Level ``l+1``'s gate ``g`` and the experts of its input read level ``l``'s output ``g``; the shared
    output of a level with a shared gate feeds the next level's shared experts (and shared gate).
    """

    def forward(self, inputs: torch.Tensor, shared_input: torch.Tensor | None = None) -> torch.Tensor:
        x, shared = inputs, shared_input
        for level in self:
            x, shared = level(x, shared)
        return x

    def top(self) -> ExpertLevel:
        """The last level."""
        level = self[-1]
        assert isinstance(level, ExpertLevel)
        return level

    @property
    def out_dim(self) -> int:
        return self.top().out_dim


def task_levels(
    in_dim: int, num_tasks: int, num_levels: int, num_task_experts: int, num_shared_experts: int,
    expert_sizes: Sequence[int], sees_all: bool, dropout: float = 0.0, **level_options: bool,
) -> LevelStack:
    """``num_levels`` levels of :func:`task_layout`; every level but the top has a shared gate when there
    are shared experts (the top's shared output would have no reader). ``level_options``: the
    :class:`ExpertLevel` switches ``residual`` and ``stop_others``."""
    if num_levels < 1:
        raise ValueError(f"expert levels: num_levels must be >= 1, got {num_levels}")
    levels = LevelStack()
    dim = in_dim
    for level in range(num_levels):
        layout = task_layout(num_tasks, num_task_experts, num_shared_experts, sees_all)
        below_top = level < num_levels - 1
        expert_level = ExpertLevel(dim, layout, expert_sizes, shared_gate=below_top and num_shared_experts > 0,
                                   dropout=dropout, **level_options)
        levels.append(expert_level)
        dim = expert_level.out_dim
    return levels


class ProgressiveLayers(nn.Module):
    """PLE's stack of extraction levels (Tang et al., RecSys 2020): task ``t``'s gate mixes task ``t``'s
    experts and the shared ones (:func:`task_layout`).

    Levels ``0 .. num_levels-2`` have a shared gate whose output feeds the next level's shared experts;
    the last level has none (only task outputs leave the stack). Level ``l+1``'s task ``k`` experts and
    gate read level ``l``'s task ``k`` output. With ``num_levels=1`` this is exactly CGC.

    ``forward(task_inputs, shared_input=None)``: ``task_inputs`` ``[B, in]`` or ``[T, B, in]``,
    ``shared_input`` ``[B, in]`` or None (see :class:`ExpertLevel`; per-task inputs with more than
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
        if num_shared_experts < 1:
            raise ValueError(f"ple: num_shared_experts must be >= 1, got {num_shared_experts}")
        self.levels = task_levels(in_dim, num_tasks, num_levels, num_task_experts, num_shared_experts,
                                  expert_sizes, sees_all=False, dropout=dropout)
        self.out_dim = self.levels.out_dim

    def forward(self, task_inputs: torch.Tensor, shared_input: torch.Tensor | None = None) -> torch.Tensor:
        return self.levels(task_inputs, shared_input)

    def last_shared_layer(self) -> nn.Module:
        """The last layer of the last level's shared experts: the top of what all tasks share (where
        GradNorm measures gradient norms)."""
        return self.levels.top().last_layers()[-1]
