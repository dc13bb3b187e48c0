"""Multi-layer perceptrons: one MLP, and a group of n independent MLPs run as batched matmuls."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """``[B, in_dim] -> [B, out_dim]``: Linear + ReLU (+ dropout) per hidden size.

    With ``last_activation=False`` the final layer is linear (a tower that outputs a logit).
    """

    def __init__(
        self, in_dim: int, sizes: Sequence[int], dropout: float = 0.0, last_activation: bool = True
    ) -> None:
        layers: list[nn.Module] = []
        dim = in_dim
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(dim, size))
            if last_activation or i < len(sizes) - 1:
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            dim = size
        super().__init__(*layers)
        self.out_dim = dim

    def last_layer(self) -> nn.Linear:
        """The final linear layer."""
        return [m for m in self if isinstance(m, nn.Linear)][-1]


class ParallelLinear(nn.Module):
    """n independent linear maps in one batched matmul: ``[n, B, in] -> [n, B, out]``."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation range
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class ParallelMLP(nn.Module):
    """n independent MLPs (experts, or one tower per task) evaluated together.

    Input ``[B, in]`` (the same input for all n) or ``[n, B, in]`` (one input each); output ``[n, B, out]``.
    """

    def __init__(
        self, n: int, in_dim: int, sizes: Sequence[int], dropout: float = 0.0, last_activation: bool = True
    ) -> None:
        super().__init__()
        self.n = n
        dims = [in_dim, *sizes]
        self.dims = tuple(dims)  # plain ints: comparable while tracing, unlike weight shapes
        self.layers = nn.ModuleList(ParallelLinear(n, a, b) for a, b in itertools.pairwise(dims))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_activation = last_activation
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.parameters_by_layer())

    def parameters_by_layer(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight ``[n, in, out]``, bias ``[n, 1, out]``) of each layer."""
        return [(layer.weight, layer.bias) for layer in self.layers if isinstance(layer, ParallelLinear)]

    def _run(self, x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The MLPs with the given (weight ``[n, in, out]``, bias ``[n, 1, out]``) per layer."""
        n = layers[0][0].shape[0]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, -1, -1)  # [n, B, in]
        for i, (weight, bias) in enumerate(layers):
            x = torch.baddbmm(bias, x, weight)
            if self.last_activation or i < len(layers) - 1:
                x = self.dropout(torch.relu(x))
        return x

    def last_layer(self) -> ParallelLinear:
        """The final (batched) linear layer."""
        layer: ParallelLinear = self.layers[-1]  # type: ignore[assignment]
        return layer


def run_together(groups: Sequence[ParallelMLP], x: torch.Tensor) -> torch.Tensor:
    """Several groups of MLPs with the same layer sizes evaluated as one group (one batched matmul per
    layer instead of one per group; each layer's weights are concatenated along n for the product).

    x: ``[B, in]`` (the same input for every MLP) or ``[sum n, B, in]`` (in group order); returns
    ``[sum n, B, out]``, equal to ``torch.cat([g(x_g) for g in groups])`` (the first group's dropout
    applies to all).
    """
    first = groups[0]
    per_group = [g.parameters_by_layer() for g in groups]
    if any(g.dims != first.dims or g.last_activation != first.last_activation for g in groups):
        raise ValueError("run_together: the groups must have the same layer sizes and activations")
    joined = [(torch.cat([w for w, _ in layer]), torch.cat([b for _, b in layer]))
              for layer in zip(*per_group, strict=True)]
    return first._run(x, joined)


class TaskTowers(ParallelMLP):
    """One tower per task ending in a logit: ``[B, in]`` or ``[T, B, in]`` ``-> [T, B]`` logits.

    ``hidden_sizes`` are the towers' hidden layers (ReLU); a final linear layer gives one logit.
    """

    def __init__(self, n_tasks: int, in_dim: int, hidden_sizes: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__(n_tasks, in_dim, [*hidden_sizes, 1], dropout, last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(-1)  # [T, B]
