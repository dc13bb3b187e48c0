"""Sequence blocks: masked softmax, a transformer layer with externally supplied LayerNorm parameters,
target-attention pooling of a behaviour history against the candidate item (bilinear, and DIN's MLP
activation unit), and the lookup of each history's candidate.

Every block takes arbitrary leading dimensions (``[..., L, d]``) so that a model can fold several
encodings of the same sequence (one per task and behaviour, say) into the batch, or broadcast them: a
``[B, 1, M, L, d]`` input normed with ``[K, M, 2, d]`` parameters becomes ``[B, K, M, L, d]`` after the
first norm, and the work before that norm is done once per sequence, not once per task.

Padding (mask False) never receives attention weight: its weight is exactly 0. In target-attention
pooling a sequence made only of padding gets all-zero weights (so a zero pooled vector); in
self-attention it attends evenly over its padding (finite outputs that the pooling then ignores). Never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.features.schema import DatasetSchema
from mtrec.nn.mlp import ParallelMLP


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` where positions with ``mask`` False get weight exactly 0.

    ``mask`` broadcasts against ``scores``. A slice with no valid position gets all-zero weights (the
    usual ``-inf`` fill would give NaN there), and its gradient stays finite.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


def conditional_layer_norm(x: torch.Tensor, dim: int, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension with a given scale and shift: ``norm(x) * gamma + beta``.

    x: ``[..., dim]``; gamma, beta: anything that broadcasts against it. The result has the broadcast shape.
    ``dim`` is passed as a Python int (not read from ``x.shape``) so that ONNX tracing sees a constant.
    """
    return F.layer_norm(x, (dim,)) * gamma + beta


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention over ``[..., L, d]`` with a key padding mask ``[..., L]``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"attention width {dim} must be a positive multiple of heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        *lead, length, dim = x.shape
        head_dim = dim // self.heads
        qkv = self.qkv(x.reshape(-1, length, dim))  # [N, L, 3d]
        q, k, v = qkv.view(-1, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # each [N, h, L, dh]
        key_mask = mask.reshape(-1, 1, 1, length)  # [N, 1, 1, L]
        # A history of padding only attends to all its (meaningless) positions rather than to none:
        # finite, and its outputs are never pooled.
        key_mask = key_mask | ~key_mask.any(-1, keepdim=True)
        heads_out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # [N, h, L, dh]
        heads_out = heads_out.transpose(1, 2).reshape(-1, length, dim)  # [N, L, d]
        return self.out(heads_out).view(*lead, length, dim)  # [..., L, d]


class ConditionalTransformerLayer(nn.Module):
    """A post-norm transformer encoder layer whose two LayerNorms take their scale and shift as inputs.

    ``x + attention(x)`` and ``y + ffn(y)`` are each normed with ``gamma[..., i, :]``/``beta[..., i, :]``
    (i = 0, 1), so one set of attention and feed-forward weights can serve many conditions (task and
    behaviour pairs), each with its own normalisation. ``NORMS`` = 2 parameter pairs per layer.
    """

    NORMS = 2

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.attention = MultiHeadSelfAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """x: ``[..., L, d]``; mask: ``[..., L]`` (same leading shape as x); gamma, beta: ``[..., 2, d]``
        with leading dimensions that broadcast against x's. Returns ``[broadcast leading..., L, d]``."""
        y = conditional_layer_norm(x + self.attention(x, mask), self.dim, gamma[..., 0:1, :], beta[..., 0:1, :])
        return conditional_layer_norm(y + self.ffn(y), self.dim, gamma[..., 1:2, :], beta[..., 1:2, :])


class ConditionalTransformer(nn.Module):
    """Learned positions, then ``num_layers`` :class:`ConditionalTransformerLayer` blocks.

    Needs ``num_layers * 2`` LayerNorm parameter pairs: gamma, beta ``[..., num_layers * 2, d]``.
    """

    def __init__(
        self, dim: int, max_len: int, num_layers: int = 1, heads: int = 2, ffn_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.positions = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.layers = nn.ModuleList(
            ConditionalTransformerLayer(dim, heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.num_norms = num_layers * ConditionalTransformerLayer.NORMS

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """x: ``[..., L, d]``, mask ``[..., L]``, gamma/beta ``[..., num_layers * 2, d]`` (broadcasting
        leading dimensions). Returns ``[..., L, d]`` over the broadcast leading shape."""
        x = x + self.positions[: x.shape[-2]]
        n = ConditionalTransformerLayer.NORMS
        for i, layer in enumerate(self.layers):
            mask = mask.expand(x.shape[:-1])  # [..., L]: x may have been broadcast by the last norm
            x = layer(x, mask, gamma[..., i * n : (i + 1) * n, :], beta[..., i * n : (i + 1) * n, :])
        return x


class TargetAttentionPooling(nn.Module):
    """Pool a history ``[..., L, d]`` into ``[..., d]`` with weights from its similarity to a target.

    score_l = <h_l, W t> / sqrt(d) over the valid positions; weights are their masked softmax (padding: 0).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)

    def forward(
        self, keys: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys ``[..., L, d]``; mask ``[..., L]``; target ``[..., d]`` (leading dimensions broadcast).

        Returns the pooled vectors ``[..., d]`` and the attention weights ``[..., L]``.
        """
        query = self.query(target).unsqueeze(-2)  # [..., 1, d]
        scores = (keys * query).sum(-1) / math.sqrt(keys.shape[-1])  # [..., L]
        weights = masked_softmax(scores, mask)
        pooled = (weights.unsqueeze(-1) * keys).sum(-2)  # [..., d]
        return pooled, weights


class DINAttentionPooling(nn.Module):
    """DIN-style target attention (Zhou et al., KDD 2018): an MLP "activation unit" scores each history item
    against the candidate from ``[h; t; h * t; h - t]``, and the history is pooled with those weights.

    Unlike DIN, the weights are a masked softmax over the valid positions (padding: exactly 0), so the
    pooled vector keeps an item embedding's scale and the mean (equal scores) is the special case; an
    empty history pools to zero. ``groups`` G splits the width d into G slices, each with its own unit
    (all G run as one batched MLP): a model whose embedding holds one slice per task keeps its tasks apart.
    """

    def __init__(self, dim: int, hidden: int = 32, groups: int = 1) -> None:
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"attention width {dim} must be a positive multiple of groups={groups}")
        self.groups = groups
        self.unit = ParallelMLP(groups, 4 * (dim // groups), [hidden, 1], last_activation=False)

    def forward(
        self, keys: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys ``[..., L, d]``; mask ``[..., L]``; target ``[..., d]`` (same leading dimensions).

        Returns the pooled vectors ``[..., d]`` and the attention weights ``[..., L, G]``.
        """
        *lead, length, dim = keys.shape
        g = self.groups
        k = keys.view(*lead, length, g, dim // g)  # [..., L, G, d/G]
        t = target.view(*lead, 1, g, dim // g).expand_as(k)  # [..., L, G, d/G]
        unit_in = torch.cat([k, t, k * t, k - t], dim=-1)  # [..., L, G, 4d/G]
        flat = unit_in.reshape(-1, g, unit_in.shape[-1]).transpose(0, 1)  # [G, N, 4d/G]
        scores = self.unit(flat).squeeze(-1).transpose(0, 1).reshape(*lead, length, g)  # [..., L, G]
        weights = masked_softmax(scores, mask.unsqueeze(-1), dim=-2)  # [..., L, G]
        pooled = (weights.unsqueeze(-1) * k).sum(-3)  # [..., G, d/G]
        return pooled.reshape(*lead, dim), weights


class HistoryTargets(nn.Module):
    """Each history's candidate: the embedding of the sparse feature it names as its ``target``, or, for a
    history without one, a learned query. ``forward(sparse_fields [B, F_sparse, d]) -> [B, M, d]``."""

    target_index: torch.Tensor  # [M]: each history's target among the sparse fields (F_sparse: the query)

    def __init__(self, schema: DatasetSchema, dim: int) -> None:
        super().__init__()
        position = {f.name: i for i, f in enumerate(schema.sparse)}
        num_sparse = len(schema.sparse)
        self.register_buffer(
            "target_index",
            torch.tensor([position.get(s.target, num_sparse) for s in schema.sequences], dtype=torch.long),
            persistent=False,
        )
        self.query = nn.Parameter(torch.zeros(1, 1, dim)) if any(not s.target for s in schema.sequences) else None

    def forward(self, sparse_fields: torch.Tensor) -> torch.Tensor:
        if self.query is not None:
            sparse_fields = torch.cat([sparse_fields, self.query.expand(sparse_fields.shape[0], -1, -1)], dim=1)
        return sparse_fields[:, self.target_index]  # [B, M, d]
