"""POSO, Personalized Cold Start Modules (Dai et al., 2021, Kuaishou, arXiv 2108.04690, "POSO:
Personalized Cold Start Modules for Large-scale Recommender Systems"), in its MMoE form (POSO-MMoE).

A model trained on all users is dominated by the regular ones; POSO makes each module's output depend on
the user's personalisation code ``x_pc`` (features saying which kind of user this is), so that users the
code sets apart get their own mixture of the same modules. Here the experts of an MMoE are scaled by a
personalised gate before the task gates mix them:

    E'_e(x) = C * sigmoid(g(x_pc))_e * E_e(x),    h_t = sum_e softmax(W_t x)_e E'_e(x)

with ``g`` a small MLP (:class:`~mtrec.nn.gating.ScaledSigmoidGates`, ReLU hidden layer) and ``C = 2``,
so a gate of 1 (its logits at 0) leaves an expert as it is; then one tower per task on ``h_t``.

Choices where the paper leaves room: ``personal_features`` (the sparse features forming ``x_pc``) default
to the user id and the item ids that histories target (every sparse field when the schema has neither);
a dataset with a user-group feature (new / regular user, activity level) should name it, as the paper
does; the gate reads their embeddings as the rest of the model does (no stop-gradient). Shared: the
embeddings, the experts and the personalised gate. Task-specific: each task's gate and tower. Sequences,
if the schema has them, are pooled into extra fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._fields import default_persona, sparse_field_indices
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.experts import Gates, mix
from mtrec.nn.gating import ScaledSigmoidGates
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes

SCALE = 2.0  # C: a gate of 1 leaves an expert unchanged


@register_model("poso")
class POSO(MultiTaskModel):
    """POSO (Dai et al., 2021): MMoE whose experts are scaled by a gate on the user's personalisation code."""

    personal_index: torch.Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_experts: Count = 4,
        expert_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        gate_hidden: Count = 32,
        personal_features: Sequence[str] | None = None,
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        personal = list(personal_features) if personal_features is not None else default_persona(schema)
        index = sparse_field_indices(schema, personal, "poso", "personal_features")
        self.register_buffer("personal_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.experts = ParallelMLP(num_experts, in_dim, expert_sizes, dropout)
        self.personal_gate = ScaledSigmoidGates(1, len(index) * embedding_dim, gate_hidden, num_experts, SCALE)
        self.gates = Gates(in_dim, len(self.task_names), num_experts)
        self.towers = TaskTowers(len(self.task_names), self.experts.out_dim, tower_sizes, dropout)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        fields = self.embedding.all_fields(features)  # [B, F, d]
        x = fields.flatten(1)  # [B, F*d]
        personal = self.personal_gate(fields[:, self.personal_index].flatten(1))[0]  # [B, E] in (0, C)
        experts = self.experts(x) * personal.t().unsqueeze(-1)  # [E, B, H]
        logits = self.towers(mix(experts, self.gates(x)))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' last layer (every task reads every expert)."""
        return list(self.experts.last_layer().parameters())
