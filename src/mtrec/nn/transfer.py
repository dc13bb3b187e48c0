"""Information transfer between tasks by attention (AITM's Adaptive Information Transfer module)."""

from __future__ import annotations

import math

import torch
from torch import nn


class AttentionTransfer(nn.Module):
    """Adaptive Information Transfer (Xi et al., KDD 2021): attention over a few candidate vectors.

    Input ``[B, U, H]``: U candidate vectors per row (in AITM, U = 2: the information transferred from the
    earlier task and the current task's own representation). Each candidate ``u`` is projected three ways
    (``h1``, ``h2``, ``h3``: linear ``H -> H``); its weight is
    ``w_u = softmax_u(<h1(u), h2(u)> / sqrt(H))`` and the output is ``sum_u w_u h3(u)``: ``[B, H]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)  # h1
        self.key = nn.Linear(dim, dim)  # h2
        self.value = nn.Linear(dim, dim)  # h3
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        scores = (self.query(candidates) * self.key(candidates)).sum(-1) * self.scale  # [B, U]
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)  # [B, U, 1]
        return (weights * self.value(candidates)).sum(1)  # [B, H]
