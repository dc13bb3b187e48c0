"""STAR, the Star Topology Adaptive Recommender (Sheng et al., CIKM 2021, "One Model to Serve All: Star
Topology Adaptive Recommender for Multi-Domain CTR Prediction"), for several tasks.

Every layer of the network has a centre, shared by all scenarios, and one partner per scenario; scenario
``s`` computes with their element-wise product (the star topology):

    y = act(x (W ⊙ W_s) + b + b_s)

- **Partitioned normalization** (:class:`PartitionedNorm`) of the concatenated embeddings ``[B, F*d]``:
  each row is normalized with its own scenario's statistics (in training the scenario's rows of the batch,
  in evaluation the scenario's running averages), then scaled and shifted by ``(gamma ⊙ gamma_s, beta +
  beta_s)``.
- **Star layers** (:class:`StarLinear`): the hidden layers ``hidden_sizes`` (ReLU), then one star output
  layer whose column ``t`` is task ``t``'s logit.
- **Auxiliary network**: an MLP (``aux_sizes``, ReLU) over the scenario's embedding and the normalized
  input, one logit per task, added to the star network's logits.

Choices the paper leaves open (it has one task and batches drawn from one domain at a time): batches mix
scenarios here, so the training statistics of partitioned normalization are computed per scenario within
the batch (a scenario with one row in a batch normalizes it to ``beta + beta_s``); normalization sits on the
embedding layer's output only; the tasks share every hidden star layer and each task has its own column of
the star output layer (multi-task heads on a shared star network); partner weights start at 1 and partner
biases at 0, so the model starts as the shared network. A layer evaluates every scenario's product and
keeps each row's own (``S`` times the work of a plain layer, ``S`` the number of scenario ids), which keeps
it one batched product and exportable. Sequences, if the schema has them, are pooled into extra fields.

Shared: the embeddings, the centre weights, the auxiliary network. Scenario-specific: the partners and the
normalization statistics. Needs a dataset with a scenario.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.models._fields import per_scenario, scenario_field, scenario_input
from mtrec.models._registry import register_model
from mtrec.models.base import MultiTaskModel
from mtrec.nn.embedding import FeatureEmbedding
from mtrec.nn.mlp import MLP
from mtrec.typed import Count, Dropout, Layers, Sizes


class StarLinear(nn.Module):
    """A star-topology linear layer: ``[B, in], scenario ids [B] -> [B, out]``, row ``b`` computed with
    ``W ⊙ W_{s_b}`` and ``b + b_{s_b}`` (centre ``W`` ``[in, out]``, partners ``W_s`` ``[S, in, out]``)."""

    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        shared = nn.Linear(in_dim, out_dim)  # its initialisation, transposed to [in, out]
        self.weight = nn.Parameter(shared.weight.detach().t().contiguous())
        self.bias = nn.Parameter(shared.bias.detach().clone())
        self.scenario_weight = nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim))
        self.scenario_bias = nn.Parameter(torch.zeros(n_scenarios, out_dim))

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        every = torch.einsum("bi,sio->sbo", x, self.weight * self.scenario_weight)  # [S, B, out]
        return per_scenario(every, scenario) + self.bias + self.scenario_bias[scenario]  # [B, out]


class PartitionedNorm(nn.Module):
    """Normalization by each row's scenario: ``[B, D], scenario ids [B] -> [B, D]``, ``x_hat`` from the
    scenario's statistics (its rows of the batch in training, its running averages in evaluation), then
    ``(gamma ⊙ gamma_s) x_hat + beta + beta_s``."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, n_scenarios: int, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.scenario_gamma = nn.Parameter(torch.ones(n_scenarios, dim))
        self.scenario_beta = nn.Parameter(torch.zeros(n_scenarios, dim))
        self.register_buffer("running_mean", torch.zeros(n_scenarios, dim))
        self.register_buffer("running_var", torch.ones(n_scenarios, dim))

    def batch_statistics(self, x: torch.Tensor, scenario: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
        """Each scenario's mean and (biased) variance over its rows ``[S, D]``, and its row count ``[S]``."""
        n = self.running_mean.shape[0]
        count = torch.bincount(scenario, minlength=n).to(x.dtype)  # [S]
        share = count.clamp(min=1).unsqueeze(1)
        mean = x.new_zeros(n, x.shape[1]).index_add(0, scenario, x) / share
        var = x.new_zeros(n, x.shape[1]).index_add(0, scenario, (x - mean[scenario]) ** 2) / share
        return mean, var, count

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var, count = self.batch_statistics(x, scenario)
            with torch.no_grad():
                seen = (count > 0).unsqueeze(1)
                m = self.momentum
                self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
                self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * var, self.running_var))
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean[scenario]) * torch.rsqrt(var[scenario] + self.eps)
        return x_hat * self.gamma * self.scenario_gamma[scenario] + self.beta + self.scenario_beta[scenario]


@register_model("star")
class STAR(MultiTaskModel):
    needs_scenario = True

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: Count = 16,
        hidden_sizes: Layers = (256, 128, 64),
        aux_sizes: Sizes = (32,),
        dropout: Dropout = 0.0,
        sequence_pooling: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(schema)
        self.scenario_field, S = scenario_field(schema, "star")
        self.embedding = FeatureEmbedding(schema, embedding_dim, sequence_pooling)
        in_dim = self.embedding.num_all_fields * embedding_dim
        self.norm = PartitionedNorm(S, in_dim)
        dims = [in_dim, *hidden_sizes]
        self.layers = nn.ModuleList(StarLinear(S, a, b) for a, b in itertools.pairwise(dims))
        self.output = StarLinear(S, dims[-1], len(self.task_names))
        self.aux = MLP(embedding_dim + in_dim, [*aux_sizes, len(self.task_names)], dropout, last_activation=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, features: Features) -> dict[str, torch.Tensor]:
        scenario = scenario_input(features, "star")
        fields = self.embedding.all_fields(features)  # [B, F, d]
        x = self.norm(fields.flatten(1), scenario)  # [B, F*d]
        h = x
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, scenario)))
        aux = self.aux(torch.cat([fields[:, self.scenario_field], x], dim=1))  # [B, T]
        logits = (self.output(h, scenario) + aux).t()  # [T, B]
        return dict(zip(self.task_names, logits, strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The centre of the last hidden star layer (every task's output column reads it)."""
        top = self.layers[-1]
        assert isinstance(top, StarLinear)
        return [top.weight, top.bias]
