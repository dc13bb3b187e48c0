"""AITM, the Adaptive Information Transfer Multi-task framework (Xi et al., KDD 2021, "Modeling the
Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted Display
Advertising").

Shared: the embeddings. Task-specific: each task's tower (an MLP giving its representation ``q_k``),
the transfer from the previous task (an MLP ``p_{k-1} = g(z_{k-1})``), the Adaptive Information Transfer
module (attention over ``{p_{k-1}, q_k}`` giving ``z_k``; :class:`~mtrec.nn.transfer.AttentionTransfer`)
and the head giving the logit. The first task has ``z_1 = q_1``.

Tasks are chained in schema order (click, then conversion; the information flows from each task to the
next). AITM's default objective is the paper's: every task learned by BCE over all impressions plus the
Behavioral Expectation Calibrator with weight 0.6 (:class:`~mtrec.objectives.objective.AllRows` with
``calibrator_weight: 0.6``), so the output of a task observed after another is its entire-space
probability ``p(conversion and click)``, read back as ``p_later / p_earlier`` for evaluation and serving.
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
from mtrec.nn.transfer import AttentionTransfer
from mtrec.typed import Count, Dropout, Layers, Sizes


@register_model("aitm")
class AITM(MultiTaskModel):
    default_objective = ("all_rows", {"calibrator_weight": 0.6})

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        tower_sizes: Layers = (256, 128),
        head_sizes: Sizes = (64,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        n_tasks = len(self.task_names)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.towers = ParallelMLP(n_tasks, in_dim, tower_sizes, dropout)
        dim = self.towers.out_dim
        self.transfers = nn.ModuleList(MLP(dim, [dim], dropout) for _ in range(n_tasks - 1))
        self.attention = nn.ModuleList(AttentionTransfer(dim) for _ in range(n_tasks - 1))
        self.heads = TaskTowers(n_tasks, dim, head_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        q = self.towers(x)  # [T, B, H]
        z = [q[0]]
        for k, (transfer, attention) in enumerate(zip(self.transfers, self.attention, strict=True), start=1):
            candidates = torch.stack([transfer(z[-1]), q[k]], dim=1)  # [B, 2, H]
            z.append(attention(candidates))  # [B, H]
        logits = self.heads(torch.stack(z))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))
