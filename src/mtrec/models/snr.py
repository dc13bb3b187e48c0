"""SNR, Sub-Network Routing (Ma et al., AAAI 2019, "SNR: Sub-Network Routing for Flexible Parameter
Sharing in Multi-Task Learning"): ``snr_trans`` and ``snr_aver``.

The shared bottom is split into ``num_subnetworks`` sub-networks (MLPs on the field embeddings, outputs
``v_i``); each task's upper sub-network reads them through learned, gated connections:

- ``snr_trans``: ``u_t = sum_i z_ti W_ti v_i``, a transformation matrix per connection;
- ``snr_aver``: ``u_t = sum_i z_ti v_i``, a gated sum (no transformation; sub-network widths must
  match, which they do here).

then task ``t``'s tower reads ``u_t``. The coding variables ``z_ti`` in ``[0, 1]`` are hard-concrete
gates (Louizos et al., 2018), each with a learned ``log alpha_ti``: in training ``z = clamp(sigmoid((log
u - log(1 - u) + log alpha) / beta) (zeta - gamma) + gamma, 0, 1)`` with ``u ~ U(0, 1)``, so a
connection can be exactly closed or exactly open while ``log alpha`` still learns through the open
interval; in evaluation ``z = clamp(sigmoid(log alpha) (zeta - gamma) + gamma, 0, 1)``, deterministic.
``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1`` (the paper's values).

Choices where the paper leaves room: ``u`` is drawn per example (the paper draws per mini-batch; per
example gives ``log alpha`` a gradient from every batch); ``log alpha`` starts at 0 (gates half open); the
paper's L0 penalty on the expected number of open connections is not added: mtrec's objectives hold no
model-side penalty terms, so the routing here is learned from the task losses alone (sparsity is not
forced). Shared: the embeddings and the sub-networks. Task-specific: each task's connections (``log
alpha``, and ``W`` for ``snr_trans``) and tower. Sequences, if the schema has them, are pooled into extra
fields.
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
from mtrec.nn.mlp import ParallelMLP, TaskTowers
from mtrec.typed import Count, Dropout, Layers, Sizes

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # hard-concrete temperature and stretch interval


class HardConcreteGates(nn.Module):
    """``rows x cols`` hard-concrete gates in ``[0, 1]`` (see the module docstring): ``forward(batch) ->
    [rows, batch, cols]`` (sampled per example in training, the deterministic value in evaluation)."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(rows, 1, cols))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch``: any tensor whose first dimension is the batch size."""
        if self.training:
            shape = (self.log_alpha.shape[0], batch.shape[0], self.log_alpha.shape[2])
            u = torch.rand(shape, dtype=self.log_alpha.dtype, device=self.log_alpha.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)  # [R, B, C]
        else:
            s = torch.sigmoid(self.log_alpha).expand(-1, batch.shape[0], -1)  # [R, B, C]
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


@register_model("snr_trans")
class SNR(MultiTaskModel):
    """SNR (Ma et al., AAAI 2019): sub-networks routed to each task through learned hard-concrete gates,
    with a transformation per connection (``snr_trans``) or a gated average (``snr_aver``)."""

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        num_subnetworks: Count = 3,
        subnetwork_sizes: Layers = (256, 128),
        tower_sizes: Sizes = (64,),
        transform: bool = True,
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        T, n = len(self.task_names), num_subnetworks
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        self.subnetworks = ParallelMLP(n, self.embedding.num_all_fields * embedding_dim, subnetwork_sizes, dropout)
        width = self.subnetworks.out_dim
        self.gates = HardConcreteGates(T, n)  # z_ti
        # W_ti [T, n, H, H] (snr_trans), initialised like nn.Linear's weights
        bound = width ** -0.5
        self.transforms = nn.Parameter(torch.empty(T, n, width, width).uniform_(-bound, bound)) if transform else None
        self.towers = TaskTowers(T, width, tower_sizes, dropout)

    def routed(self, v: torch.Tensor) -> torch.Tensor:
        """Each task's input ``u_t`` ``[T, B, H]`` from the sub-networks' outputs ``v`` ``[n, B, H]``."""
        z = self.gates(v.transpose(0, 1))  # [T, B, n]
        if self.transforms is None:
            return torch.einsum("tbi,ibh->tbh", z, v)
        transformed = torch.einsum("ibh,tihk->tibk", v, self.transforms)  # W_ti v_i [T, n, B, H]
        return torch.einsum("tbi,tibk->tbk", z, transformed)

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        x = self.embedding.all_fields(features).flatten(1)  # [B, F*d]
        logits = self.towers(self.routed(self.subnetworks(x)))  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The sub-networks' last layer (every task may read every sub-network)."""
        return list(self.subnetworks.last_layer().parameters())


register_variant("snr_aver", SNR, transform=False)  # gated sum of the sub-networks, no transformation
