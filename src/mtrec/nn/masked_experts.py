"""A level of normalised experts mixed by masked gates (HoME's hierarchy, Wang et al., 2024, arXiv
2408.05430).

The level reads ``I`` inputs ``[I, B, in]``; input 0 is the global one. It has ``num_global`` global
experts, which read input 0, and local experts, expert ``j`` reading input ``local_inputs[j]`` (a task
group's representation, say). Every expert reads its input through a low-rank feature gate of its own,
``x * 2 * sigmoid(x A_e B_e)`` (:class:`~mtrec.nn.gating.ScaledSigmoidGates` without activation; rank
``feature_gate_rank``, 0 for none), so experts that share an input still see it differently. Experts are
:class:`~mtrec.nn.normalized.NormalizedParallelMLP` groups (``Swish(BatchNorm(x W + b))`` per layer).
Gate ``g`` reads input ``gate_inputs[g]`` and mixes only the experts that row ``g`` of ``mask`` allows
(:func:`~mtrec.nn.gating.masked_softmax`): the others get weight exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtrec.nn.experts import mix
from mtrec.nn.gating import ScaledSigmoidGates, masked_softmax
from mtrec.nn.mlp import ParallelLinear
from mtrec.nn.normalized import NormalizedParallelMLP
from mtrec.nn.recording import EXPERT_WEIGHTS, RecordingBlock


class MaskedExpertLevel(RecordingBlock):
    """``forward(inputs [I, B, in]) -> [G, B, H]``: one mixture per gate (see the module docstring).

    ``mask`` ``[G, num_global + len(local_inputs)]`` (bool): experts in order global, then local.
    """

    local_inputs: torch.Tensor
    gate_inputs: torch.Tensor
    mask: torch.Tensor

    def __init__(
        self,
        in_dim: int,
        num_global: int,
        local_inputs: Sequence[int],
        gate_inputs: Sequence[int],
        mask: torch.Tensor,
        expert_sizes: Sequence[int],
        feature_gate_rank: int = 8,
    ) -> None:
        super().__init__()
        n_experts = num_global + len(local_inputs)
        if num_global < 1 or not local_inputs or tuple(mask.shape) != (len(gate_inputs), n_experts):
            raise ValueError(f"MaskedExpertLevel: need num_global >= 1, local experts and a mask of shape "
                             f"[{len(gate_inputs)}, {n_experts}]; got num_global={num_global}, "
                             f"{len(local_inputs)} local experts, mask {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("MaskedExpertLevel: every gate's mask must allow at least one expert")
        self.num_global = num_global
        self.register_buffer("local_inputs", torch.tensor(list(local_inputs), dtype=torch.long), persistent=False)
        self.register_buffer("gate_inputs", torch.tensor(list(gate_inputs), dtype=torch.long), persistent=False)
        self.register_buffer("mask", mask.bool(), persistent=False)
        self.feature_gates = ScaledSigmoidGates(n_experts, in_dim, feature_gate_rank, in_dim, scale=2.0,
                                                activation=False) if feature_gate_rank > 0 else None
        self.global_experts = NormalizedParallelMLP(num_global, in_dim, expert_sizes)
        self.local_experts = NormalizedParallelMLP(len(local_inputs), in_dim, expert_sizes)
        self.gates = ParallelLinear(len(gate_inputs), in_dim, n_experts)
        self.out_dim = self.global_experts.out_dim

    def gate_weights(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each gate's weights over the experts ``[G, B, E]`` (0 where its mask blocks)."""
        weights = masked_softmax(self.gates(inputs[self.gate_inputs]), self.mask)  # [G, B, E]
        self.record(EXPERT_WEIGHTS, weights)
        return weights

    def expert_outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every expert's output ``[E, B, H]``, global experts first."""
        g = self.num_global
        x = torch.cat([inputs[:1].expand(g, -1, -1), inputs[self.local_inputs]])  # [E, B, in]
        if self.feature_gates is not None:
            x = x * self.feature_gates(x)  # [E, B, in]
        return torch.cat([self.global_experts(x[:g]), self.local_experts(x[g:])])  # [E, B, H]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return mix(self.expert_outputs(inputs), self.gate_weights(inputs))  # [G, B, H]
