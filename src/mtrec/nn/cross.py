"""Cross-RNN: the cross-network recurrence with weights tied across steps (an RNN over cross depth).

One step, for the input ``x0`` ``[B, D]`` and the state ``h`` ``[B, D]`` (``h_0 = x0``)::

    c_t = x0 * (W h_{t-1} + b) + h_{t-1}                  # the cross-network layer (Wang et al., DCN)
    g_t = sigmoid(W_g [x0; h_{t-1}] + b_g)                # update gate
    h_t = g_t * c_t + (1 - g_t) * h_{t-1}  =  h_{t-1} + g_t * x0 * (W h_{t-1} + b)

``W`` is ``D x D`` or low-rank ``U V^T`` (``rank``). Every step uses the same parameters, so the parameter
count does not depend on the number of steps. ``W_g [x0; h]`` is split into ``x0 W_gx + h W_gh``; the
``x0`` part is computed once per input and reused by every step.

A :class:`CrossTaskPart` is the small task-specific part with which a task continues a shared recurrence:
a gate-bias offset, an optional low-rank adapter added to ``W h`` and an optional LayerNorm of the new
state. The cell can also hold ``n`` independent cells evaluated as one batched product (one cell per task,
like :class:`~mtrec.nn.mlp.ParallelMLP`). Under :func:`~mtrec.nn.recording.recording` each step records
its update gate and new state, a task's steps under its part, the shared steps under the cell.

:class:`FieldGRU` is the other reading of the cross axis: a GRU that runs over the F field embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtrec.nn.recording import CROSS_GATE, CROSS_STATE, RecordingBlock


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    """A parameter drawn like ``nn.Linear``'s weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class CrossTaskPart(RecordingBlock):
    """The task-specific part of a shared Cross-RNN cell, for one task.

    ``gate_bias`` ``[D]`` shifts the gate logits; with ``adapter_rank > 0`` a low-rank map ``h A B``
    (``A: [D, r]``, ``B: [r, D]``) is added to ``W h + b``; with ``norm`` the new state is layer-normalised
    with the task's own scale and shift. Parameters: ``D`` + ``2 D r`` + (``2 D`` with norm).
    """

    def __init__(self, dim: int, adapter_rank: int = 0, norm: bool = False) -> None:
        super().__init__()
        if adapter_rank < 0:
            raise ValueError(f"CrossTaskPart: adapter_rank must be >= 0, got {adapter_rank}")
        self.gate_bias = nn.Parameter(torch.zeros(dim))
        self.adapter_down = _uniform(dim, adapter_rank, fan_in=dim) if adapter_rank else None
        self.adapter_up = _uniform(adapter_rank, dim, fan_in=dim) if adapter_rank else None
        self.norm = nn.LayerNorm(dim) if norm else None

    def linear_delta(self, h: torch.Tensor) -> torch.Tensor | None:
        """The adapter's addition to ``W h + b``: ``[..., D] -> [..., D]`` (None without an adapter)."""
        if self.adapter_down is None or self.adapter_up is None:
            return None
        return h @ self.adapter_down @ self.adapter_up

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h) if self.norm is not None else h


class CrossRNNCell(RecordingBlock):
    """``n`` Cross-RNN cells of width ``D`` (``n = 1``: one cell; ``n = T``: one cell per task, batched).

    Inputs ``x0`` and ``h`` are ``[B, D]`` (the same for all n cells) or ``[n, B, D]``; states returned are
    ``[n, B, D]``. ``rank=None`` gives a full ``D x D`` W; an integer r gives ``W = U V^T`` with
    ``2 D r`` parameters.
    """

    def __init__(self, dim: int, rank: int | None = None, n: int = 1) -> None:
        super().__init__()
        if dim < 1 or n < 1:
            raise ValueError(f"CrossRNNCell: dim and n must be >= 1, got dim={dim}, n={n}")
        if rank is not None and not 1 <= rank <= dim:
            raise ValueError(f"CrossRNNCell: rank must be None or in [1, {dim}], got {rank}")
        self.dim, self.rank, self.n = dim, rank, n
        if rank is None:
            self.weight: nn.Parameter | None = _uniform(n, dim, dim, fan_in=dim)  # x @ W orientation
            self.down = self.up = None
        else:
            self.weight = None
            self.down = _uniform(n, dim, rank, fan_in=dim)  # V: [n, D, r]
            self.up = _uniform(n, rank, dim, fan_in=rank)  # U^T: [n, r, D]
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))
        self.gate_x = _uniform(n, dim, dim, fan_in=2 * dim)
        self.gate_h = _uniform(n, dim, dim, fan_in=2 * dim)
        self.gate_bias = nn.Parameter(torch.zeros(n, 1, dim))

    def _per_cell(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x.unsqueeze(0).expand(self.n, -1, -1)  # [n, B, D]
        if x.dim() != 3 or x.shape[0] != self.n:
            raise ValueError(f"CrossRNNCell: expected [B, {self.dim}] or [{self.n}, B, {self.dim}], "
                             f"got {tuple(x.shape)}")
        return x

    def gate_input(self, x0: torch.Tensor) -> torch.Tensor:
        """The step-independent part of the gate logits, ``x0 W_gx + b_g``: ``[n, B, D]``."""
        return torch.baddbmm(self.gate_bias, self._per_cell(x0), self.gate_x)

    def state_weight(self) -> torch.Tensor:
        """Every product a step takes of the state, side by side: ``[n, D, D + D]`` (``W | W_gh``) or
        ``[n, D, r + D]`` (``V | W_gh``), so that a step multiplies ``h`` once."""
        first = self.weight if self.weight is not None else self.down
        assert first is not None
        return torch.cat([first, self.gate_h], dim=-1)

    def step(
        self, x0: torch.Tensor, gate_x0: torch.Tensor, h: torch.Tensor, part: CrossTaskPart | None = None,
        state_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step: ``x0``, ``gate_x0`` (from :meth:`gate_input`) and ``h`` are ``[n, B, D]``;
        ``state_weight``: :meth:`state_weight` when already built."""
        products = torch.bmm(h, self.state_weight() if state_weight is None else state_weight)  # [n, B, D or r + D]
        # split, not two slices: the backward is one cat, not two zero-filled copies of the product
        first, gate_h = products.split([products.shape[-1] - self.dim, self.dim], dim=-1)
        # W h + b, or U (V^T h) + b: [n, B, D]
        lin = first + self.bias if self.up is None else torch.baddbmm(self.bias, first, self.up)
        gate_logits = gate_x0 + gate_h  # [n, B, D]
        if part is not None:
            delta = part.linear_delta(h)
            if delta is not None:
                lin = lin + delta
            gate_logits = gate_logits + part.gate_bias
        gate = torch.sigmoid(gate_logits)  # [n, B, D]
        h = h + gate * x0 * lin  # = g * c + (1 - g) * h
        h = part.normalize(h) if part is not None else h
        recorder = self if part is None else part  # a task's steps are recorded by its part
        recorder.record(CROSS_GATE, gate)
        recorder.record(CROSS_STATE, h)
        return h

    def forward(
        self,
        x0: torch.Tensor,
        steps: int,
        h: torch.Tensor | None = None,
        part: CrossTaskPart | None = None,
        gate_x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` steps from ``h`` (default ``h_0 = x0``), with the task part if given.

        x0, h: ``[B, D]`` or ``[n, B, D]``; gate_x0: :meth:`gate_input` of x0 when already computed.
        Returns the final state ``[n, B, D]`` (``h`` itself, broadcast, when ``steps == 0``).
        """
        x0 = self._per_cell(x0)
        h = x0 if h is None else self._per_cell(h)
        if steps > 0 and gate_x0 is None:
            gate_x0 = self.gate_input(x0)
        weight = self.state_weight() if steps > 0 else None
        for _ in range(steps):
            assert gate_x0 is not None
            h = self.step(x0, gate_x0, h, part, weight)
        return h


class FieldGRU(nn.Module):
    """A GRU over the field axis: field embeddings ``[B, F, d]`` read as a length-F sequence.

    ``forward`` returns the last layer's output at every field ``[B, F, H]`` and its final state
    ``[B, H]``. ``h0`` ``[B, H]`` starts a one-layer GRU from a given state (zeros by default), which lets
    one task's recurrence continue from another's.
    """

    def __init__(self, in_dim: int, hidden: int, num_layers: int = 1) -> None:
        super().__init__()
        self.hidden, self.num_layers = hidden, num_layers
        self.gru = nn.GRU(in_dim, hidden, num_layers=num_layers, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if h0 is not None and self.num_layers != 1:
            raise ValueError("FieldGRU: a starting state h0 is supported for one-layer GRUs only")
        start = None if h0 is None else h0.unsqueeze(0).contiguous()  # [1, B, H]
        outputs, last = self.gru(x, start)  # [B, F, H], [layers, B, H]
        return outputs, last[-1]
