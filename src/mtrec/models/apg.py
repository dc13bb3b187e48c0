"""APG, the Adaptive Parameter Generation network (Yan et al., NeurIPS 2022, "APG: Adaptive Parameter
Generation Network for Click-Through Rate Prediction").

Instead of one weight matrix for every example, each layer's weights are generated per example from a
condition, in a low-rank form that keeps the cost small:

    W(z) = V S(z) U,    h' = ReLU(h W(z) + b)

with ``V`` ``[in, K]`` and ``U`` ``[K, out]`` learned as usual and only the small core ``S(z)`` ``[K, K]``
generated from the example's condition ``z`` (so a layer never forms ``W``: ``h V``, then ``S``, then
``U``). Here every task has a tower of such layers (batched over the tasks), and a plain linear head gives
its logit.

Choices where the paper leaves room: the condition ``z`` is the flattened field embeddings (every
feature, the paper's "all features" condition) through one shared ReLU layer of width ``condition_dim``;
each (task, layer) has its own generator, a linear map from ``z`` to the ``K*K`` core, added to the
identity (``S(z) = I + G(z)``, so a layer starts as the plain low-rank layer ``V U``, initialised to keep
the activations' scale); ``K = rank`` (8). The paper's over-parameterisation of ``U`` and ``V`` during
training is not used. Shared: the embeddings and the condition layer. Task-specific: each task's tower
(``U``, ``V``, ``b`` and generators) and head. Sequences, if the schema has them, are pooled into extra
fields.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP, ParallelLinear, TaskTowers
from mtrec.typed import Count, Dropout, Layers


class GeneratedLinear(nn.Module):
    """``n`` linear layers whose weights are generated per example: ``forward(h [n, B, in], z [B, c]) ->
    [n, B, out] = h V S(z) U + b``, ``S(z) = I + G(z)`` ``[n, B, K, K]``, ``G`` a linear map of the
    condition ``z``."""

    def __init__(self, n: int, in_dim: int, out_dim: int, condition_dim: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.v = nn.Parameter(torch.randn(n, in_dim, rank) / math.sqrt(in_dim))  # keeps the input's scale
        self.u = nn.Parameter(torch.randn(n, rank, out_dim) * math.sqrt(2.0 / rank))  # He: ReLU follows
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        self.generator = ParallelLinear(n, condition_dim, rank * rank)

    def cores(self, z: torch.Tensor) -> torch.Tensor:
        """``S(z) = I + G(z)`` ``[n, B, K, K]`` for the conditions ``z`` ``[B, c]``."""
        n = self.v.shape[0]
        generated = self.generator(z.unsqueeze(0).expand(n, -1, -1)).unflatten(-1, (self.rank, self.rank))
        return generated + torch.eye(self.rank, dtype=generated.dtype, device=generated.device)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        low = torch.einsum("nbk,nbkj->nbj", torch.bmm(h, self.v), self.cores(z))  # h V S(z) [n, B, K]
        return torch.baddbmm(self.bias, low, self.u)  # [n, B, out]


@register_model("apg")
class APG(MultiTaskModel):
    """APG (Yan et al., NeurIPS 2022): task towers whose layer weights are generated per example from a
    condition, in low-rank form."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        tower_sizes: Layers = (256, 128, 64),
        rank: Count = 8,
        condition_dim: Count = 64,
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        dims = [self.embedding.num_all_fields * embedding_dim, *tower_sizes]
        self.condition = MLP(dims[0], [condition_dim])
        self.layers = nn.ModuleList(GeneratedLinear(T, a, b, condition_dim, rank) for a, b in itertools.pairwise(dims))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = TaskTowers(T, dims[-1], ())

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        z = self.condition(x)  # [B, c]
        h = x.unsqueeze(0).expand(len(self.task_names), -1, -1)  # [T, B, F*d]
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, z)))  # [T, B, H_l]
        logits = self.heads(h)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The condition layer (every task's generators read it)."""
        return list(self.condition.parameters())
