"""DSelect-k (Hazimeh et al., NeurIPS 2021, "DSelect-k: Differentiable Selection in the Mixture of Experts
with Applications to Multi-Task Learning"): MMoE whose gates select ``k`` of ``n`` experts through a
smooth-step binary encoding, so training can reach an exactly sparse selection by gradient descent.

Each task's gate has ``k`` selectors. Selector ``i`` holds ``m = ceil(log2 n)`` logits ``z_i`` and
reads them through the smooth-step function (cubic between ``-gamma/2`` and ``gamma/2``, exactly 0 below
and 1 above)::

    S(t) = 0 if t <= -gamma/2;  1 if t >= gamma/2;  -2/gamma^3 t^3 + 3/(2 gamma) t + 1/2 otherwise

Expert ``l`` (binary code ``b(l)``) gets ``r_l(z_i) = prod_j [S(z_ij) if b_j(l) = 1 else 1 - S(z_ij)]``,
a distribution over the experts that is one-hot once every ``S(z_ij)`` is 0 or 1. The gate's weights
are ``w = sum_i softmax(a)_i r(z_i)``: at most ``k`` experts are non-zero when the selectors are binary.
The gates here are per example (the paper's per-example variant): ``z`` and ``a`` are linear functions
of the field embeddings, one set per task. Task ``t`` reads ``sum_l w_tl E_l``, then its tower.

Choices where the paper leaves room: ``gamma = 1``; when ``n`` is not a power of two, codes beyond
``n - 1`` name expert ``code - n`` (a selector's distribution stays one over the ``n`` experts, and a
binary selector still selects exactly one);
the paper's entropy regulariser (which pushes the selectors to binary values sooner) is not added, as
mtrec's objectives hold no model-side penalty terms: selectors become binary only as far as the task
losses drive them. Shared: the embeddings and the experts. Task-specific: each task's gate and tower.
Sequences, if the schema has them, are pooled into extra fields.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import mix
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.nn.recording import EXPERT_WEIGHTS, RecordingBlock
from mtrec.typed import Count, Dropout, Layers, Rate, Sizes


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """The cubic smooth step: 0 for ``t <= -gamma/2``, 1 for ``t >= gamma/2``, continuously
    differentiable in between."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectGates(RecordingBlock):
    """``n_gates`` DSelect-k gates over ``n_experts`` reading one input: ``[B, in] -> [G, B, n_experts]``
    (see the module docstring); the weights of each gate sum to 1."""

    codes: torch.Tensor
    fold: torch.Tensor

    def __init__(self, in_dim: int, n_gates: int, n_experts: int, k: int, gamma: float = 1.0) -> None:
        super().__init__()
        if n_experts < 2 or k < 1:
            raise ValueError(f"dselect_k: need num_experts >= 2 and k >= 1; got {n_experts}, {k}")
        self.n_gates, self.n_experts, self.k, self.gamma = n_gates, n_experts, k, gamma
        self.bits = math.ceil(math.log2(n_experts))
        self.selectors = nn.Linear(in_dim, n_gates * k * self.bits)  # z
        self.selector_weights = nn.Linear(in_dim, n_gates * k)  # a
        code = torch.arange(2**self.bits)
        bits = (code.unsqueeze(1) >> torch.arange(self.bits)) & 1  # [2^m, m]: each code's bits
        self.register_buffer("codes", bits.bool(), persistent=False)
        fold = torch.nn.functional.one_hot(code % n_experts, n_experts).to(torch.get_default_dtype())  # [2^m, n]
        self.register_buffer("fold", fold, persistent=False)

    def selections(self, x: torch.Tensor) -> torch.Tensor:
        """Each selector's distribution over the experts ``r(z)`` ``[B, G, k, n]``."""
        z = self.selectors(x).view(-1, self.n_gates, self.k, 1, self.bits)  # [B, G, k, 1, m]
        s = smooth_step(z, self.gamma)
        r = torch.where(self.codes, s, 1.0 - s).prod(-1)  # [B, G, k, 2^m] over the codes
        return r @ self.fold  # [B, G, k, n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.selector_weights(x).view(-1, self.n_gates, self.k), dim=-1)  # [B, G, k]
        weights = torch.einsum("bgk,bgkn->gbn", a, self.selections(x))  # [G, B, n]
        self.record(EXPERT_WEIGHTS, weights)
        return weights


@register_model("dselect_k")
class DSelectK(MultiTaskModel):
    """DSelect-k (Hazimeh et al., NeurIPS 2021): MMoE whose gates select k experts through a differentiable
    smooth-step binary encoding."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_experts: Count = 4,
        k: Count = 2,
        gamma: Rate = 1.0,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.gates = DSelectGates(in_dim, len(self.task_names), num_experts, k, gamma)
        self.towers = TaskTowers(len(self.task_names), self.experts.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(mix(self.experts(x), self.gates(x)))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' last layer (every task's gate may select every expert)."""
        return list(self.experts.last_layer().parameters())
