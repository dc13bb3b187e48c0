"""CGC, Customized Gate Control (Tang et al., RecSys 2020, "Progressive Layered Extraction (PLE): A
Novel Multi-Task Learning (MTL) Model for Personalized Recommendations").

Shared: the embeddings and a group of shared experts. Task-specific: each task's own experts, its gate
(over its own experts plus the shared ones) and its tower. CGC is one extraction level, which is PLE
with ``num_levels=1`` (its last level has no shared gate): this class is exactly that.
Sequences, if the schema has them, are mean-pooled into extra fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtrec.features.schema import DatasetSchema
from mtrec.models._registry import register_model
from mtrec.models.ple import PLE


@register_model("cgc")
class CGC(PLE):
    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int = 16,
        num_task_experts: int = 1,
        num_shared_experts: int = 2,
        expert_sizes: Sequence[int] = (256, 128),
        tower_sizes: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            schema, embedding_dim, num_levels=1, num_task_experts=num_task_experts,
            num_shared_experts=num_shared_experts, expert_sizes=expert_sizes, tower_sizes=tower_sizes,
            dropout=dropout,
        )
