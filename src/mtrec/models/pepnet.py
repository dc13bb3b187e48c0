"""PEPNet, the Parameter and Embedding Personalized Network (Chang et al., KDD 2023, "PEPNet: Parameter
and Embedding Personalized Network for Infusing with Personalized Prior Information").

Built from Gate Neural Units (:class:`~mtrec.nn.gating.ScaledSigmoidGates`):
``GateNU(x) = gamma * sigmoid(W2 ReLU(W1 x + b1) + b2)``, values in ``(0, gamma)``, ``gamma = 2``.

- **EPNet** (embedding personalisation): with ``E`` the ``[B, F, d]`` embeddings of all fields and
  ``E_dom`` those of the domain (prior) features, ``delta_dom = GateNU_ep(E_dom ++ sg(E))`` ``[B, F]``
  (one weight per field) and ``O_ep = delta_dom * E``. The gate reads ``E`` under stop-gradient
  (``sg``): its gradient never reaches the embeddings through its input, only the domain features'
  embeddings, so the gate adapts the embeddings without pulling them toward what suits the gate.
  ``domain_features=()`` (the default) takes the dataset's scenario (:attr:`DatasetSchema.scenario`) as the
  domain feature where it has one; without one (one-domain data) the gate reads ``sg(E)`` alone.
- **PPNet** (parameter personalisation): from the persona features (``persona_features``; default: the
  user id and the item ids the histories target, else every sparse field) ``P``, each tower layer
  ``l`` has its own Gate NU over ``P ++ sg(O_ep)`` giving one gate per task and unit,
  ``delta_t^l`` ``[B, width_l]``, and task ``t``'s tower computes
  ``H_t^{l+1} = ReLU((delta_t^l * H_t^l) W_t^l + b_t^l)`` from ``H_t^0 = O_ep`` (the last layer linear,
  giving the logit). ``sg(O_ep)`` keeps the towers' gates from training EPNet.

Shared: the embeddings, the EPNet gate and the PPNet gates' hidden layers (one Gate NU per tower layer
serves all tasks). Task-specific: each task's tower and its slice of each PPNet gate's output layer.
Sequences, if the schema has them, are mean-pooled into extra fields.
"""

from __future__ import annotations

import itertools
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
from mtrec.nn.gating import ScaledSigmoidGates
from mtrec.nn.mlp import ParallelLinear
from mtrec.typed import Count, Dropout, Rate, Sizes


@register_model("pepnet")
class PEPNet(MultiTaskModel):
    domain_index: torch.Tensor
    persona_index: torch.Tensor

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        tower_sizes: Sizes = (256, 128, 64),
        gate_hidden: Count = 64,
        gamma: Rate = 2.0,
        domain_features: Sequence[str] = (),
        persona_features: Sequence[str] | None = None,
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T = len(self.task_names)
        persona = list(persona_features) if persona_features is not None else default_persona(schema)
        if not domain_features and schema.scenario is not None:
            domain_features = (schema.scenario,)  # the scenario is the domain
        domain = sparse_field_indices(schema, domain_features, "pepnet", "domain_features")
        self.register_buffer("domain_index", torch.tensor(domain, dtype=torch.long), persistent=False)
        persona_index = sparse_field_indices(schema, persona, "pepnet", "persona_features")
        self.register_buffer("persona_index", torch.tensor(persona_index, dtype=torch.long), persistent=False)
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        F, d = self.embedding.num_all_fields, embedding_dim
        self.epnet = ScaledSigmoidGates(1, (len(domain_features) + F) * d, gate_hidden, F, gamma)
        dims = [F * d, *tower_sizes, 1]
        persona_dim = (len(persona) + F) * d
        self.ppnet = nn.ModuleList(ScaledSigmoidGates(1, persona_dim, gate_hidden, T * width, gamma)
                                   for width in dims[:-1])
        self.tower_layers = nn.ModuleList(ParallelLinear(T, a, b) for a, b in itertools.pairwise(dims))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def domain_gate(self, fields: torch.Tensor) -> torch.Tensor:
        """EPNet's ``delta_dom`` ``[B, F]`` in ``(0, gamma)`` from the fields ``[B, F, d]``."""
        gate_in = fields.detach().flatten(1)  # [B, F*d]
        if self.domain_index.numel():
            gate_in = torch.cat([fields[:, self.domain_index].flatten(1), gate_in], dim=1)
        return self.epnet(gate_in).squeeze(0)  # [B, F]

    def tower_gates(self, fields: torch.Tensor, personalized: torch.Tensor) -> list[torch.Tensor]:
        """PPNet's gates per tower layer, ``[T, B, width_l]`` each, from the fields ``[B, F, d]`` and
        EPNet's output ``O_ep`` ``[B, F*d]`` (read under stop-gradient)."""
        gate_in = torch.cat([fields[:, self.persona_index].flatten(1), personalized.detach()], dim=1)
        T, B = len(self.task_names), fields.shape[0]
        return [gate(gate_in).view(B, T, -1).transpose(0, 1) for gate in self.ppnet]  # [T, B, width_l]

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        fields = self.embedding.all_fields(features)  # [B, F, d]
        personalized = (self.domain_gate(fields).unsqueeze(-1) * fields).flatten(1)  # O_ep [B, F*d]
        h = personalized.unsqueeze(0).expand(len(self.task_names), -1, -1)  # [T, B, F*d]
        last = len(self.tower_layers) - 1
        for i, (layer, gate) in enumerate(zip(self.tower_layers, self.tower_gates(fields, personalized), strict=True)):
            h = layer(gate * h)  # [T, B, width_{l+1}]
            if i < last:
                h = self.dropout(torch.relu(h))
        logits = h.squeeze(-1)  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """EPNet's gate: every task's tower reads its output ``O_ep``."""
        return list(self.epnet.parameters())
