"""Squeeze-and-excitation re-weighting of field embeddings (SENet, as used on feature fields by FiBiNET).

Squeeze each field to a summary, excite the summaries through a small bottleneck MLP, and rescale the
fields with the resulting sigmoid weights. ``mode="field"``: one weight per field (summary = the field's
mean over its d dimensions); ``mode="bit"``: one weight per element (summary = all elements). ``n``
independent SENets (one per task, say) run as one batched matmul.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from mtrec.nn.mlp import ParallelMLP
from mtrec.nn.recording import FIELD_WEIGHTS, RecordingBlock

SENetMode = Literal["field", "bit"]


class SENet(RecordingBlock):
    """``n`` SENets over ``num_fields`` fields of width ``dim``: ``[n, B, F, d] -> [n, B, F, d]``.

    The input may also be ``[B, F, d]``, shared by all n. The bottleneck width is
    ``max(1, summary_width // reduction)``.
    """

    def __init__(self, n: int, num_fields: int, dim: int, mode: SENetMode = "field", reduction: int = 2) -> None:
        super().__init__()
        if mode not in get_args(SENetMode):
            raise ValueError(f"SENet mode must be one of {get_args(SENetMode)}, got {mode!r}")
        if reduction < 1:
            raise ValueError(f"SENet reduction must be >= 1, got {reduction}")
        self.mode = mode
        width = num_fields if mode == "field" else num_fields * dim
        self.excite = ParallelMLP(n, width, [max(1, width // reduction), width], last_activation=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid weights in (0, 1): ``[n, B, F, 1]`` (field) or ``[n, B, F, d]`` (bit)."""
        summary = x.mean(-1) if self.mode == "field" else x.flatten(-2)  # [(n,) B, F] or [(n,) B, F*d]
        w = torch.sigmoid(self.excite(summary))  # [n, B, F] or [n, B, F*d]
        weights = w.unsqueeze(-1) if self.mode == "field" else w.view(w.shape[0], *x.shape[-3:])  # [n, B, F, 1 or d]
        self.record(FIELD_WEIGHTS, weights)
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)  # [n, B, F, d]
