"""Sequence blocks: masked softmax, a transformer layer with externally supplied LayerNorm parameters,
target-attention pooling of a behaviour history against the candidate item (bilinear, and DIN's MLP
activation unit), and the lookup of each history's candidate.

A batch of S padded histories ``[S, L, d]`` with a validity mask ``[S, L]`` is encoded as follows: the
self-attention runs on the padded layout (a batched product needs equal lengths), and everything that
works position by position (the norms, the feed-forward network, the pooling's scores and weighted sum)
runs on the valid positions only, packed into ``[V, d]`` rows (:class:`ValidPositions`). Padding never
receives attention weight and is never pooled, so skipping it changes no output; real histories are
mostly padding (synthetic ``sequences``: 70 %), so the position-wise work shrinks by that much. Several
encodings of the same histories (one per task, say) share the leading dimension K: ``[K, V, d]``; the
first attention runs once per history (K = 1) and the first norm broadcasts it to every condition.

Padding (mask False) never receives attention weight: its weight is exactly 0. In target-attention
pooling a sequence made only of padding gets all-zero weights (so a zero pooled vector); in
self-attention it attends evenly over its padding (finite outputs that the pooling then ignores). Never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def conditional_layer_norm(x: torch.Tensor, dim: int, valid: ValidPositions, gamma: torch.Tensor,
                           beta: torch.Tensor) -> torch.Tensor:
    """LayerNorm of valid positions' rows, each with the scale and shift of its sequence's group:
    ``norm(x) * gamma[:, group] + beta[:, group]``.

    x: ``[K', V, d]`` (rows as ``valid`` orders them, K' = 1 or K); gamma, beta: ``[K, G, d]``, G =
    ``valid.groups``; ``dim`` = d, a Python int so that ONNX tracing sees a constant. Returns ``[K, V, d]``.

    Eager, the rows of each group are contiguous: one fused multiply-add per group, whose gradients are
    sums over the group's rows, taken in float32 (gathering gamma per row, ``[K, V, d]``, has its gradient
    scattered back row by row: several times slower on CPU, and, for bf16 parameters from autocast, summed
    in bf16, which loses most of it). Traced, compiled or exported (no group sizes), the parameters are
    gathered per row, in float32."""
    normed = F.layer_norm(x, (dim,))
    if valid.group_sizes is None:
        group = torch.remainder(valid.sequence, valid.groups)  # [V]
        return normed * gamma.float().index_select(1, group) + beta.float().index_select(1, group)
    parts = [torch.addcmul(beta[:, g, None], rows, gamma[:, g, None])  # [K, V_g, d]
             for g, rows in enumerate(normed.split(valid.group_sizes, dim=-2))]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)


def select_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index, :]``: rows ``[..., N, d]`` -> ``[..., len(index), d]``. With a single leading slice
    (``[1, N, d]``) the gather runs along dim 0 of the 2-D rows, whose backward scatter ran twice as fast on
    CPU as one along dim -2 of the 3-D tensor."""
    if x.dim() == 3 and x.shape[0] == 1:
        return x[0].index_select(0, index).unsqueeze(0)
    return x.index_select(-2, index)


LENGTH_CHUNKS = 4  # groups of histories of similar length that self-attention runs on (valid_outputs)


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
        """x ``[..., L, d]``, mask ``[..., L]`` -> ``[..., L, d]``.

        Under CPU autocast (``train.precision: bf16``) the attention computes in float32: with heads this
        narrow (d / h = 8 at the defaults) the bf16 kernels ran slower than the float32 ones on CPU, and
        the float32 result is the exact one. CUDA autocast keeps bf16 / fp16 attention."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self._attend(x.float(), mask)
        return self._attend(x, mask)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention as batched products around a softmax, head by head on strided slices of one
        ``qkv`` product (no copy that moves the heads into the batch dimension), the padding masked by an
        additive ``-inf`` bias fused into the first product, and each head's output projected by its slice
        of ``out``'s weights (summed: no concatenation). At these shapes (heads of width 8, histories of at
        most tens of positions) this ran forward and backward in about half the time of
        ``F.scaled_dot_product_attention``'s CPU kernel, whose cost per (history, head) block dominates
        when each block holds so little work."""
        *lead, length, dim = x.shape
        heads, head_dim = self.heads, dim // self.heads
        rows = x.reshape(-1, length, dim)  # [N, L, d]
        parts = self.qkv(rows).split(head_dim, dim=-1)  # q of each head, then k, then v: [N, L, dh] each
        key_mask = mask.reshape(-1, length, 1)  # [N, L, 1]
        # A history of padding only attends to all its (meaningless) positions rather than to none:
        # finite, and its outputs are never pooled.
        key_mask = key_mask | ~key_mask.any(-2, keepdim=True)
        bias = torch.zeros(key_mask.shape, dtype=rows.dtype, device=x.device).masked_fill_(~key_mask, float("-inf"))
        out: torch.Tensor | None = None
        for h in range(heads):
            q, k, v = parts[h], parts[heads + h], parts[2 * heads + h]
            # the scores keys-by-queries, normalised over dim 1: CPU softmax over a last dimension shorter
            # than its vector width (16 floats) runs element by element, over dim 1 it is vectorized
            scores = torch.baddbmm(bias, k, q.transpose(1, 2), alpha=head_dim**-0.5)  # [N, L keys, L queries]
            weights = F.dropout(torch.softmax(scores, dim=1), self.dropout, self.training)
            head = torch.bmm(weights.transpose(1, 2), v)  # [N, L, dh]
            weight = self.out.weight[:, h * head_dim : (h + 1) * head_dim]  # [d, dh]
            out = F.linear(head, weight, self.out.bias) if out is None else out + F.linear(head, weight)
        assert out is not None
        return out.view(*lead, length, dim)  # [..., L, d]

    def valid_outputs(self, x: torch.Tensor, valid: ValidPositions, chunks: int = LENGTH_CHUNKS) -> torch.Tensor:
        """The attention's outputs at the valid positions only: x ``[K', S, L, d]`` -> ``[K', V, d]``, equal
        to ``valid.pack(self(x, mask))``.

        The S histories are sorted by their last valid position and cut into ``chunks`` groups of equal
        count; each group runs on its own histories cut after their longest one's last valid position,
        so that attention's work follows the histories' lengths rather than the padded L (what is cut is
        padding, which no valid position attends to). The groups' inputs are one gather from x and their
        outputs one gather into the valid rows, so the backward pass scatters each once. A traced or
        exported model runs the padded layout at once (its shapes may not depend on the data).
        """
        if chunks == 1 or static_shapes():
            return valid.pack(self(x, valid.mask.expand(x.shape[0], -1, -1)))
        s, length = valid.mask.shape
        ends = (valid.mask * torch.arange(1, length + 1, device=x.device)).amax(-1)  # [S]: last valid + 1
        ends, order = torch.sort(ends, descending=True, stable=True)
        size = -(-s // chunks)
        # (histories [s_g], length l_g) of each group holding a valid position (a group of padding only has none)
        groups = [(h, end) for h, end in zip(order.split(size), ends[::size].tolist(), strict=True) if end > 0]
        if not groups:  # no valid position at all
            return x.new_zeros(*x.shape[:-3], 0, x.shape[-1])
        steps = torch.arange(length, device=x.device)
        where = torch.cat([(h.unsqueeze(1) * length + steps[:end]).reshape(-1) for h, end in groups])  # [P]
        sizes = [h.numel() * end for h, end in groups]  # each group's s_g * l_g positions
        inputs = select_rows(x.flatten(-3, -2), where).split(sizes, dim=-2)  # [K', s_g * l_g, d] each
        masks = valid.mask.reshape(-1)[where].split(sizes)
        outputs = [self(part.unflatten(-2, (h.numel(), end)), mask.view(1, h.numel(), end).expand(x.shape[0], -1, -1))
                   for part, mask, (h, end) in zip(inputs, masks, groups, strict=True)]  # [K', s_g, l_g, d] each
        slot = torch.full((s * length,), -1, dtype=torch.long, device=x.device)
        slot[where] = torch.arange(where.numel(), device=x.device)  # where each attended position's output is
        return select_rows(torch.cat([out.flatten(-3, -2) for out in outputs], dim=-2), slot[valid.flat])


def static_shapes() -> bool:
    """Whether the code runs traced, compiled or exported, where shapes may not depend on the data."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


@dataclass(frozen=True)
class ValidPositions:
    """Where the valid (non-padding) positions of S padded sequences of length L are.

    mask: bool ``[S, L]``; flat: ``[V]`` their indices into the S * L positions; sequence: ``[V]`` the
    sequence each one belongs to. The S sequences form ``groups`` interleaved groups (sequence s is in
    group s mod G: laid out as ``[S / G, G]`` flattened, e.g. G behaviour types); the rows are ordered by
    group, then by position, and ``group_sizes`` counts each group's rows (None where shapes may not depend
    on the data, :func:`static_shapes`). :meth:`pack` and :meth:`unpack` move between the padded layout
    ``[..., S, L, d]`` and rows ``[..., V, d]`` (any leading dimensions).
    """

    mask: torch.Tensor
    flat: torch.Tensor
    sequence: torch.Tensor
    groups: int = 1
    group_sizes: list[int] | None = None

    @classmethod
    def of(cls, mask: torch.Tensor, groups: int = 1) -> ValidPositions:
        s, length = mask.shape
        if s % groups:
            raise ValueError(f"{s} sequences do not form {groups} interleaved groups")
        by_group = mask.view(-1, groups, length).transpose(0, 1)  # [G, S / G, L]
        index = by_group.reshape(-1).nonzero().squeeze(-1)  # [V], into the [G, S / G, L] layout
        group, rest = torch.div(index, s // groups * length, rounding_mode="floor"), index % (s // groups * length)
        sequence = torch.div(rest, length, rounding_mode="floor") * groups + group  # [V]
        sizes: list[int] | None = None
        if not static_shapes():  # one group holds all V rows: no reduction, no device sync
            sizes = [index.numel()] if groups == 1 else by_group.sum((1, 2)).tolist()
        return cls(mask, sequence * length + rest % length, sequence, groups, sizes)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., S, L, d] -> [..., V, d]``."""
        return select_rows(x.flatten(-3, -2), self.flat)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """``[..., V, d] -> [..., S, L, d]``, zeros at padding."""
        s, length = self.mask.shape
        padded = rows.new_zeros(*rows.shape[:-2], s * length, rows.shape[-1])
        index = self.flat.unsqueeze(-1).expand_as(rows)  # [..., V, d] (scatter: exports to ONNX as it is)
        return padded.scatter(-2, index, rows).unflatten(-2, (s, length))

    def sum_per_sequence(self, rows: torch.Tensor) -> torch.Tensor:
        """Sum of each sequence's rows: ``[..., V, d] -> [..., S, d]`` (zeros for an empty sequence)."""
        sums = rows.new_zeros(*rows.shape[:-2], self.mask.shape[0], rows.shape[-1])
        return sums.scatter_add(-2, self.sequence.unsqueeze(-1).expand_as(rows), rows)


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
        self, x: torch.Tensor, valid: ValidPositions, gamma: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """x: padded ``[K', S, L, d]`` (K' = 1 or K); gamma, beta: per group of sequences ``[K, G, 2, d]``
        (:class:`ValidPositions`). Returns the valid positions' outputs ``[K, V, d]``."""
        attended = valid.pack(x) + self.attention.valid_outputs(x, valid)  # [K', V, d]
        y = conditional_layer_norm(attended, self.dim, valid, gamma[..., 0, :], beta[..., 0, :])  # [K, V, d]
        return conditional_layer_norm(y + self.ffn(y), self.dim, valid, gamma[..., 1, :], beta[..., 1, :])


class ConditionalTransformer(nn.Module):
    """Learned positions, then ``num_layers`` :class:`ConditionalTransformerLayer` blocks, over K
    conditions at once.

    Needs ``num_layers * 2`` LayerNorm parameter pairs per condition and group of sequences: gamma, beta
    ``[K, G, num_layers * 2, d]``, where the S sequences are G interleaved groups (laid out as ``[B, G]``
    flattened, e.g. G behaviour types) and sequence s takes column ``s mod G`` (G = 1: one for all).
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
    ) -> tuple[torch.Tensor, ValidPositions]:
        """x: ``[S, L, d]``, mask ``[S, L]``, gamma/beta ``[K, G, num_layers * 2, d]``. Returns the
        encodings of the valid positions ``[K, V, d]`` (:meth:`ValidPositions.unpack` gives the padded
        ``[K, S, L, d]``) and where those positions are."""
        valid = ValidPositions.of(mask, gamma.shape[1])
        n = ConditionalTransformerLayer.NORMS
        padded = (x + self.positions[: x.shape[-2]]).unsqueeze(0)  # [1, S, L, d]
        rows = x.new_zeros(0)
        for i, layer in enumerate(self.layers):
            if i > 0:
                padded = valid.unpack(rows)  # [K, S, L, d]
            rows = layer(padded, valid, gamma[..., i * n : (i + 1) * n, :], beta[..., i * n : (i + 1) * n, :])
        return rows, valid


class TargetAttentionPooling(nn.Module):
    """Pool a history into one vector with weights from its similarity to a target.

    score_l = <h_l, W t> / sqrt(d) over the valid positions; weights are their masked softmax (padding: 0).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)

    def forward(
        self, keys: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys ``[..., L, d]`` (padded); mask ``[..., L]``; target ``[..., d]`` (leading dimensions
        broadcast). Returns the pooled vectors ``[..., d]`` and the attention weights ``[..., L]``."""
        query = self.query(target).unsqueeze(-2)  # [..., 1, d]
        scores = (keys * query).sum(-1) / math.sqrt(keys.shape[-1])  # [..., L]
        weights = masked_softmax(scores, mask)
        pooled = (weights.unsqueeze(-1) * keys).sum(-2)  # [..., d]
        return pooled, weights

    def pool_rows(
        self, rows: torch.Tensor, valid: ValidPositions, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same pooling of histories given as their valid positions: rows ``[K, V, d]`` (as
        :class:`ConditionalTransformer` returns them), target ``[S, d]``. Returns the pooled vectors
        ``[K, S, d]`` and the weights ``[K, S, L]`` (padding: 0)."""
        query = self.query(target).index_select(0, valid.sequence)  # [V, d]
        scores = (rows * query).sum(-1, keepdim=True) / math.sqrt(rows.shape[-1])  # [K, V, 1]
        weights = masked_softmax(valid.unpack(scores).squeeze(-1), valid.mask)  # [K, S, L]
        pooled = valid.sum_per_sequence(valid.pack(weights.unsqueeze(-1)) * rows)  # [K, S, d]
        return pooled, weights


class DINAttentionPooling(nn.Module):
    """DIN-style target attention (Zhou et al., KDD 2018): an MLP "activation unit" scores each history item
    against the candidate from ``[h; t; h * t; h - t]``, and the history is pooled with those weights.

    Unlike DIN, the weights are a masked softmax over the valid positions (padding: exactly 0), so the
    pooled vector keeps an item embedding's scale and the mean (equal scores) is the special case; an
    empty history pools to zero. ``groups`` G splits the width d into G slices, each with its own unit
    (all G run as one batched MLP): a model whose embedding holds one slice per task keeps its tasks apart.

    The unit's first layer is applied as the sum of its four input blocks' products, ``h (W_h + W_d) +
    (h * t) W_ht + t (W_t - W_d)``, the candidate's part once per history, and only at the valid
    positions (a traced, compiled or exported model scores every position: its shapes may not depend on
    the data). The scores equal those of the unit on the concatenated input.
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
        g, width = self.groups, dim // self.groups
        histories = keys.reshape(-1, length, dim)  # [N, L, d]
        t = target.reshape(-1, g, width).transpose(0, 1)  # [G, N, d/G]
        valid = None if static_shapes() else ValidPositions.of(mask.reshape(-1, length))
        if valid is None:  # every position, each row's history by its index
            flat, history = histories.reshape(-1, dim), torch.arange(mask.numel(), device=keys.device) // length
        else:
            flat, history = valid.pack(histories), valid.sequence  # [V, d], [V]
        rows = flat.view(-1, g, width).transpose(0, 1)  # [G, rows, d/G]
        (w1, b1), (w2, b2) = self.unit.parameters_by_layer()
        w_h, w_t, w_ht, w_d = w1.split(width, dim=1)  # each [G, d/G, H]
        per_history = torch.baddbmm(b1, t, w_t - w_d)  # [G, N, H]: the candidate's part
        hidden = torch.baddbmm(per_history.index_select(1, history), rows, w_h + w_d)
        hidden = torch.relu(hidden + torch.bmm(rows * t.index_select(1, history), w_ht))  # [G, rows, H]
        row_scores = torch.baddbmm(b2, hidden, w2).squeeze(-1).transpose(0, 1)  # [rows, G]
        scores = row_scores.view(-1, length, g) if valid is None else valid.unpack(row_scores)  # [N, L, G]
        weights = masked_softmax(scores, mask.reshape(-1, length, 1), dim=1)  # [N, L, G]
        pooled = (weights.unsqueeze(-1) * histories.view(-1, length, g, width)).sum(1)  # [N, G, d/G]
        return pooled.reshape(*lead, dim), weights.view(*lead, length, g)


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
