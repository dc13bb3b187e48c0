"""Mixtures of experts: softmax gates over a group of experts (MMoE, OMoE, CGC/PLE)."""

from __future__ import annotations

import torch
from torch import nn


class Gates(nn.Module):
    """``n_gates`` softmax gates over ``n_experts``: ``[B, in] -> [B, n_gates, n_experts]``."""

    def __init__(self, in_dim: int, n_gates: int, n_experts: int) -> None:
        super().__init__()
        self.n_gates = n_gates
        self.n_experts = n_experts
        self.linear = nn.Linear(in_dim, n_gates * n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x).view(-1, self.n_gates, self.n_experts)  # [B, G, E]
        return torch.softmax(logits, dim=-1)


def mix(experts: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sums of expert outputs.

    experts: ``[E, B, H]``; gates: ``[B, G, E]``; returns ``[G, B, H]``.
    """
    return torch.einsum("ebh,bge->gbh", experts, gates)
