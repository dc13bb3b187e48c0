"""OMoE, the one-gate mixture of experts (the baseline of Ma et al., KDD 2018, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts").

Shared: the embeddings, a group of expert MLPs and ONE softmax gate over them, whose mixture is the
input of every task. Task-specific: one tower per task. Sequences, if the schema has them, are
mean-pooled into extra fields. It is MMoE with a single gate (same options and parameter layout, the
gate group holding one gate).
"""

from __future__ import annotations

from mtrec.models._registry import register_model
from mtrec.models.mmoe import MMoE


@register_model("omoe")
class OMoE(MMoE):
    gate_per_task = False
