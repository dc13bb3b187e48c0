"""A hypernetwork that turns (task, behaviour) embeddings into LayerNorm scales and shifts.

For task k and behaviour m: z = body([t_k; b_m]) (an MLP, or the identity when it has no hidden layer),
gamma = 1 + W_g z, beta = W_b z, reshaped to ``num_norms`` LayerNorms of width ``dim``. The only
parameters that belong to one task or one behaviour are its embedding row, so adding a task or a
behaviour costs ``task_dim`` or ``behaviour_dim`` parameters and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.nn.mlp import MLP
from mtrec.nn.recording import NORM_SCALE, NORM_SHIFT, RecordingBlock


class NormHypernetwork(RecordingBlock):
    """LayerNorm parameters for every (task, behaviour) pair: ``forward() -> gamma, beta [K, M, N, d]``.

    K = ``num_tasks``, M = ``num_behaviours``, N = ``num_norms``, d = ``dim``. W_g and W_b are shared by
    all pairs and start small (std ``init_std``), so every pair begins near the plain LayerNorm yet with
    parameters of its own.
    """

    def __init__(
        self,
        num_tasks: int,
        num_behaviours: int,
        dim: int,
        num_norms: int,
        task_dim: int = 8,
        behaviour_dim: int = 8,
        hidden_sizes: Sequence[int] = (32,),
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if min(num_tasks, num_behaviours, dim, num_norms, task_dim, behaviour_dim) < 1:
            raise ValueError(
                "NormHypernetwork needs positive sizes; got "
                f"num_tasks={num_tasks} num_behaviours={num_behaviours} dim={dim} num_norms={num_norms} "
                f"task_dim={task_dim} behaviour_dim={behaviour_dim}"
            )
        self.num_norms = num_norms
        self.dim = dim
        self.task = nn.Parameter(torch.randn(num_tasks, task_dim))
        self.behaviour = nn.Parameter(torch.randn(num_behaviours, behaviour_dim))
        self.body = MLP(task_dim + behaviour_dim, hidden_sizes)
        z_dim = self.body.out_dim  # task_dim + behaviour_dim when there is no hidden layer
        self.scale = nn.Linear(z_dim, num_norms * dim, bias=False)  # W_g
        self.shift = nn.Linear(z_dim, num_norms * dim, bias=False)  # W_b
        nn.init.normal_(self.scale.weight, std=init_std)
        nn.init.normal_(self.shift.weight, std=init_std)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta: ``[K, M, N, d]`` for every (task, behaviour) pair at once."""
        k, m = self.task.shape[0], self.behaviour.shape[0]
        pairs = torch.cat(
            [self.task.unsqueeze(1).expand(k, m, -1), self.behaviour.unsqueeze(0).expand(k, m, -1)], dim=-1
        )  # [K, M, task_dim + behaviour_dim]
        z = self.body(pairs)  # [K, M, z]
        gamma = 1.0 + self.scale(z).view(k, m, self.num_norms, self.dim)  # [K, M, N, d]
        beta = self.shift(z).view(k, m, self.num_norms, self.dim)  # [K, M, N, d]
        self.record(NORM_SCALE, gamma)
        self.record(NORM_SHIFT, beta)
        return gamma, beta
