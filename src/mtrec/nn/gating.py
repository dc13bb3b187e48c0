"""Element-wise scaling gates.

:class:`ScaledSigmoidGates`: ``n`` gates ``delta = scale * sigmoid(W2 act(W1 x + b1) + b2)``, values in
``(0, scale)``, that re-weight a representation element by element. With ``activation=True`` this is
PEPNet's Gate Neural Unit (Chang et al., KDD 2023: ReLU hidden layer, ``scale`` = gamma = 2); with
``activation=False`` the two linear maps compose to one of rank ``hidden``, HoME's low-rank feature gate
(``2 * sigmoid(x A B)``). A gate of 1 leaves its element unchanged, so a gate can amplify (up to
``scale``) as well as suppress.
"""

from __future__ import annotations

import torch

from mtrec.nn.mlp import ParallelLinear
from mtrec.nn.recording import ELEMENT_GATES, RecordingBlock


class ScaledSigmoidGates(RecordingBlock):
    """``n`` gates: ``[B, in]`` (one input for all) or ``[n, B, in]`` (one each) ``-> [n, B, out]`` in
    ``(0, scale)``; one batched matmul per layer for all n."""

    def __init__(
        self, n: int, in_dim: int, hidden: int, out_dim: int, scale: float = 2.0, activation: bool = True
    ) -> None:
        super().__init__()
        if min(n, in_dim, hidden, out_dim) < 1 or scale <= 0:
            raise ValueError(f"ScaledSigmoidGates needs positive sizes and scale; got n={n} in_dim={in_dim} "
                             f"hidden={hidden} out_dim={out_dim} scale={scale}")
        self.n = n
        self.scale = scale
        self.activation = activation
        self.first = ParallelLinear(n, in_dim, hidden)
        self.second = ParallelLinear(n, hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)  # [n, B, in]
        hidden = self.first(x)  # [n, B, hidden]
        if self.activation:
            hidden = torch.relu(hidden)
        gates = self.scale * torch.sigmoid(self.second(hidden))  # [n, B, out]
        self.record(ELEMENT_GATES, gates)
        return gates

