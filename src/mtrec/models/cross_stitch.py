"""Cross-Stitch networks (Misra et al., CVPR 2016, "Cross-stitch Networks for Multi-task Learning").

Every task has its own column (an MLP on the shared field embeddings); after each hidden layer ``l`` a
cross-stitch unit mixes the columns' activations linearly, ``x~_t = sum_s alpha^l_ts x_s``, with the
mixing weights ``alpha^l`` learned. ``alpha = I`` keeps the columns independent (no sharing), all-equal
weights share fully; training finds the sharing in between, layer by layer. A linear head per task gives
its logit.

Choices where the paper leaves room: one scalar ``alpha_ts`` per pair of tasks per layer (the paper also
allows one per channel), initialised as the paper recommends, mostly the task's own column: ``alpha_tt =
0.9`` and ``0.1 / (T-1)`` elsewhere; the embedding table is shared (the columns start at the first
hidden layer); the stitch follows each hidden layer's activation. Shared: the embeddings and the stitch
weights. Task-specific: each column and head. Sequences, if the schema has them, are pooled into extra
fields.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import ParallelLinear, TaskTowers
from mtrec.typed import Count, Dropout, Layers

OWN_WEIGHT = 0.9  # alpha_tt at initialisation


def stitch_init(num_tasks: int) -> torch.Tensor:
    """``alpha`` ``[T, T]``: ``OWN_WEIGHT`` on the diagonal, the rest of each row spread evenly."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - OWN_WEIGHT) / (num_tasks - 1)
    return torch.full((num_tasks, num_tasks), other) + (OWN_WEIGHT - other) * torch.eye(num_tasks)


@register_model("cross_stitch")
class CrossStitch(MultiTaskModel):
    """Cross-Stitch (Misra et al., CVPR 2016): one column per task, linearly mixed after every hidden layer
    by learned cross-stitch units."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        hidden_sizes: Layers = (256, 128, 64),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        dims = [self.embedding.num_all_fields * embedding_dim, *hidden_sizes]
        self.columns = nn.ModuleList(ParallelLinear(T, a, b) for a, b in itertools.pairwise(dims))
        self.stitches = nn.Parameter(stitch_init(T).repeat(len(hidden_sizes), 1, 1))  # alpha^l [L, T, T]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = TaskTowers(T, dims[-1], ())

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        h = x.unsqueeze(0).expand(len(self.task_names), -1, -1)  # [T, B, F*d]
        for layer, alpha in zip(self.columns, self.stitches, strict=True):
            h = self.dropout(torch.relu(layer(h)))  # [T, B, H_l]
            h = torch.einsum("ts,sbh->tbh", alpha, h)  # the cross-stitch unit
        logits = self.heads(h)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))
