"""Normalised Swish experts (HoME's expert normalisation, Wang et al., 2024, arXiv 2408.05430).

Each layer of each expert is ``Swish(BatchNorm(x W + b))``: batch normalisation standardises every
expert's pre-activations to the same per-unit distribution (mean 0, variance 1, then a learned scale and
shift), and Swish (``z * sigmoid(z)``) keeps the units from dying at zero as ReLU units do, so the
experts' outputs stay on one scale that a gate can weigh fairly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.nn.mlp import ParallelLinear


class ExpertBatchNorm(nn.BatchNorm1d):
    """Batch normalisation of ``n`` experts' units at once: ``[n, B, H] -> [n, B, H]``, statistics per
    (expert, unit) over the batch.

    A training batch of a single row has no batch statistics; it is normalised with the running ones
    (as in evaluation), so a last batch of one row cannot stop a run.
    """

    def __init__(self, n: int, width: int) -> None:
        super().__init__(n * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, B, H = x.shape
        flat = x.transpose(0, 1).reshape(B, n * H)  # [B, n*H]
        batch_stats = self.training and B > 1
        if batch_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                           training=batch_stats, momentum=self.momentum if self.momentum is not None else 0.1,
                           eps=self.eps)
        return out.view(B, n, H).transpose(0, 1)  # [n, B, H]


class NormalizedParallelMLP(nn.Module):
    """``n`` experts, each layer ``Swish(BatchNorm(x W + b))``: ``[B, in]`` (one input for all) or
    ``[n, B, in]`` (one input each) ``-> [n, B, out]``; one batched matmul per layer."""

    def __init__(self, n: int, in_dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        if n < 1 or not sizes:
            raise ValueError(f"NormalizedParallelMLP needs n >= 1 and at least one layer; got n={n}, sizes={sizes}")
        self.n = n
        dims = [in_dim, *sizes]
        self.layers = nn.ModuleList(ParallelLinear(n, a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(ExpertBatchNorm(n, b) for b in sizes)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)  # [n, B, in]
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = F.silu(norm(layer(x)))  # [n, B, H]
        return x

    def last_layer(self) -> ParallelLinear:
        """The final (batched) linear layer."""
        layer: ParallelLinear = self.layers[-1]  # type: ignore[assignment]
        return layer
