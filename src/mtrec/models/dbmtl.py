"""DBMTL, Deep Bayesian Multi-Target Learning (Wang et al., 2019, Alibaba, arXiv 1902.09154, "Deep Bayesian
Multi-Target Learning for Recommender Systems").

The tasks' joint probability is factorised along a Bayesian network, ``p(t_1, .., t_T | x) = prod_k p(t_k
| t_1 .. t_{k-1}, x)``: each task's prediction is conditioned on the representations of the tasks it
depends on. With ``b`` the shared bottom's output and ``h_k`` task ``k``'s specific layers on it, task
``k``'s relation layers read its own ``h_k`` and the relation outputs ``r_j`` of its parents,

    r_k = MLP_k([h_k ; r_j for each parent j]),    logit_k = w_k r_k + c_k.

Choices where the paper leaves room: the network is the chain of the schema's task order, each task's
parents being every task before it (click, then conversion: ``p(conversion | click, x)``), as in the
paper's three-target example; a parent's *representation* ``r_j`` (not its probability) is passed on, so
the dependency is learned end to end, and every task's loss trains its parents' relation layers through
it. Shared: the embeddings and the bottom MLP. Task-specific: each task's specific layers, relation
layers and logit. Sequences, if the schema has them, are pooled into extra fields.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP, ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers


@register_model("dbmtl")
class DBMTL(MultiTaskModel):
    """DBMTL (Wang et al., 2019): task towers chained as a Bayesian network, each task conditioned on the
    representations of the tasks before it."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        bottom_sizes: Layers = (256, 128),
        task_sizes: Layers = (64,),
        relation_sizes: Layers = (32,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        self.bottom = MLP(self.embedding.num_all_fields * embedding_dim, bottom_sizes, dropout)
        self.specific = ParallelMLP(T, self.bottom.out_dim, task_sizes, dropout)  # h_k
        width = relation_sizes[-1]
        self.relations = nn.ModuleList(  # task k reads h_k and its k parents' r_j
            MLP(self.specific.out_dim + k * width, relation_sizes, dropout) for k in range(T))
        self.logits = TaskTowers(T, width, ())

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        specific = self.specific(self.bottom(x))  # [T, B, H]
        relations: list[torch.Tensor] = []
        for k, relation in enumerate(self.relations):
            relations.append(relation(torch.cat([specific[k], *relations], dim=1)))  # r_k [B, W]
        logits = self.logits(torch.stack(relations))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The bottom MLP's last layer."""
        return list(self.bottom.last_layer().parameters())
