"""ESMM, the Entire Space Multi-task Model (Ma et al., SIGIR 2018, "Entire Space Multi-Task Model: An
Effective Approach for Estimating Post-Click Conversion Rate").

Shared: the embeddings. Task-specific: one tower per task (the CTR tower and the CVR tower).

ESMM is this architecture trained with the entire-space objective, its default
(:class:`~mtrec.objectives.objective.EntireSpace`): a task observed after another (conversion after
click) has its tower's logit read as the conditional probability ``p(task | earlier)`` (pCVR), and the
loss is on click and on the chained product (``pCTCVR = pCTR * pCVR``) over all impressions, so the CVR
tower is never fit on the biased sample of clicked rows alone; the objective chains to any depth
(click -> cart -> buy). The same objective trains any other model (``train.objective: entire_space``),
and ESMM's towers can be trained with any other objective.
"""

from __future__ import annotations

import torch

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import TaskTowers
from mtrec.typed import Count, Dropout, Sizes


@register_model("esmm")
class ESMM(MultiTaskModel):
    default_objective = ("entire_space", {})

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        tower_sizes: Sizes = (256, 128, 64),
        dropout: Dropout = 0.0,
    ) -> None:
        super().__init__(schema)
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.towers = TaskTowers(len(self.task_names), in_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(x)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))
