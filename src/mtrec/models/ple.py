"""PLE, Progressive Layered Extraction (Tang et al., RecSys 2020, "Progressive Layered Extraction (PLE):
A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations").

A stack of ``num_levels`` CGC extraction levels (:class:`~mtrec.nn.experts.ProgressiveLayers`). Shared:
the embeddings, each level's shared experts, and in every level but the last a shared gate over all of
that level's experts whose mixture feeds the next level's shared experts. Task-specific: each task's
experts and gate at every level (reading that task's output of the level below) and its tower.
Sequences, if the schema has them, are pooled into extra fields
(``sequence_pooling``: ``mean`` or DIN-style ``attention``, see :mod:`mtrec.nn.embedding`).

Variant ``cgc``: Customized Gate Control, the paper's single extraction level (``num_levels=1``; the last
level has no shared gate): shared experts, and each task's own experts, gate (over its own experts plus
the shared ones) and tower.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model, register_variant
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import ProgressiveLayers
from mtrec.nn.mlp import TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes


@register_model("ple")
class PLE(MultiTaskModel):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_levels: Count = 2,
        num_task_experts: Count = 1,
        num_shared_experts: Count = 2,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        self.extraction = ProgressiveLayers(
            self.embedding.num_all_fields * embedding_dim, len(self.task_names), num_levels,
            num_task_experts, num_shared_experts, expert_sizes, dropout,
        )
        self.towers = TaskTowers(len(self.task_names), self.extraction.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(self.extraction(x))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The last level's shared experts' last layer."""
        return list(self.extraction.last_shared_layer().parameters())


register_variant("cgc", PLE, num_levels=1)  # CGC: one extraction level
