"""Feature embedding: every sparse field and sequence shares one table, addressed by per-table offsets.

One ``nn.Embedding`` holds all tables stacked; each field's ids are shifted by its table's offset, so a
batch of F sparse fields is one gather, not F. Features that name the same table (a target item and the
items of its behaviour histories) read the same rows. Dense values are projected to width ``d`` per field
(``value * w_f + b_f``), so every field becomes one ``d``-vector.

``table`` is any module that maps stacked ids ``[...]`` to rows ``[..., d]``: the ``nn.Embedding`` here,
or, in a run with ``train.embedding_sharding``, TorchRec tables sharded over the ranks
(:mod:`mtrec.training.sharding`), which split the stacked table by ``tables`` (name -> offset, rows).
Sharded tables apply their update inside the backward pass of each lookup, so every row a forward pass
needs comes from one call: :meth:`FeatureEmbedding.embed` looks a batch's sparse fields and all its
histories up together and returns them as an :class:`EmbeddedBatch`; a model that reads several parts
of the batch embeds it once and passes that on, and every other method makes one table call.

Models without a sequence module of their own read :meth:`FeatureEmbedding.all_fields`: the fields plus
one pooled vector per history, pooled as ``sequence_pooling`` says: ``mean`` (the mean over the valid
positions) or ``attention`` (DIN-style target attention against the history's candidate, the sparse
feature it names as ``target``; :class:`~mtrec.nn.sequence.DINAttentionPooling`), so a baseline can see a
history the way a target-attention model does. Every model that reads ``all_fields`` takes
``sequence_pooling`` as a constructor option (the registry reads options from constructor signatures)
and passes it here.

While :func:`capturing` is active (a training step of a weighting that balances on the shared
representation, see :mod:`mtrec.objectives.multibalance`), :meth:`FeatureEmbedding.embed` also records the
tensors it returns (fields and histories); outside it (evaluation, prediction, ONNX export) it records
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.nn.sequence import DINAttentionPooling, HistoryTargets

SEQUENCE_POOLINGS = ("mean", "attention")


@dataclass(frozen=True)
class EmbeddedBatch:
    """A batch's rows from one table call: ``fields`` ``[B, F, d]`` (sparse then dense), and the stacked
    histories ``[B, M, L, d]`` with their validity mask ``[B, M, L]`` (None without sequences; L is the
    longest history's length, shorter ones are padded with id 0, mask False)."""

    fields: torch.Tensor
    num_sparse: int
    history: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def sparse(self) -> torch.Tensor:
        """The sparse fields ``[B, F_sparse, d]``."""
        return self.fields[:, : self.num_sparse]


class FeatureEmbedding(nn.Module):
    """Embeds a batch's fields to ``[B, F, d]`` (F = sparse + dense fields) and its sequences.

    ``sequence_pooling`` (``mean`` | ``attention``) pools the histories for :meth:`all_fields`;
    ``attention_groups`` G gives the attention one unit per d/G-wide slice of the width (a model whose
    width holds one slice per task).
    """

    sparse_offsets: torch.Tensor

    def __init__(
        self, schema: DatasetSchema, dim: int, sequence_pooling: str = "mean", attention_groups: int = 1
    ) -> None:
        super().__init__()
        if sequence_pooling not in SEQUENCE_POOLINGS:
            raise ValueError(f"sequence_pooling must be one of {list(SEQUENCE_POOLINGS)}, got {sequence_pooling!r}")
        self.dim = dim
        self.tables: dict[str, tuple[int, int]] = {}  # table name -> (offset, rows) in the stacked table
        total = 0
        for name, size in schema.table_sizes().items():
            self.tables[name] = (total, size)
            total += size
        offsets = {name: offset for name, (offset, _) in self.tables.items()}
        table = nn.Embedding(max(total, 1), dim)
        nn.init.normal_(table.weight, std=0.05)
        self.table: nn.Module = table
        self.register_buffer(
            "sparse_offsets",
            torch.tensor([offsets[f.table_name] for f in schema.sparse], dtype=torch.long),
            persistent=False,
        )
        self.sequence_offsets = {s.name: offsets[s.table_name] for s in schema.sequences}
        self.sequence_names = [s.name for s in schema.sequences]
        n_dense = len(schema.dense)
        self.dense_weight = nn.Parameter(torch.randn(n_dense, dim) * 0.05)
        self.dense_bias = nn.Parameter(torch.zeros(n_dense, dim))
        self.num_sparse = len(schema.sparse)
        self.num_fields = self.num_sparse + n_dense
        self.sequence_pooling = sequence_pooling
        self.history_targets: HistoryTargets | None = None
        self.attention: DINAttentionPooling | None = None
        if sequence_pooling == "attention" and schema.sequences:
            self.history_targets = HistoryTargets(schema, dim)
            self.attention = DINAttentionPooling(dim, groups=attention_groups)
        self.captured: list[torch.Tensor] | None = None  # see capturing()

    def embed(self, features: Features) -> EmbeddedBatch:
        """Every field and history of ``features``, all rows from one table call."""
        sparse = features.sparse + self.sparse_offsets  # [B, F_sparse]
        history: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if not self.sequence_names:
            rows = self.table(sparse)  # [B, F_sparse, d]
        else:
            ids = self._stacked_ids(features)  # [B, M, L]
            mask = ids > 0
            stacked = ids + self._history_offsets(ids.device).view(1, -1, 1)
            both = self.table(torch.cat([sparse, stacked.flatten(1)], dim=1))  # [B, F_sparse + M*L, d]
            rows, history = both[:, : self.num_sparse], both[:, self.num_sparse :].view(*ids.shape, -1)
        fields = torch.cat([rows, self._dense(features)], dim=1)
        if self.captured is not None:
            self.captured.extend([fields] if history is None else [fields, history])
        return EmbeddedBatch(fields, self.num_sparse, history, mask)

    def _stacked_ids(self, features: Features) -> torch.Tensor:
        """All histories' ids ``[B, M, L]``, each padded with 0 to the longest length L."""
        blocks = [features.sequences[n] for n in self.sequence_names]
        length = max(b.shape[1] for b in blocks)
        return torch.stack([F.pad(b, (0, length - b.shape[1])) for b in blocks], dim=1)  # [B, M, L]

    def _history_offsets(self, device: torch.device) -> torch.Tensor:
        """Each history's table offset ``[M]``."""
        return torch.tensor([self.sequence_offsets[n] for n in self.sequence_names], device=device)

    def _dense(self, features: Features) -> torch.Tensor:
        """Dense field embeddings ``[B, F_dense, d]``."""
        return features.dense.unsqueeze(-1) * self.dense_weight + self.dense_bias

    def mean_pooled_sequences(self, features: Features) -> torch.Tensor:
        """Each history mean-pooled over its valid positions: ``[B, S, d]`` (zeros for an empty one)."""
        return self._mean_pooled(self.embed(features))

    def _mean_pooled(self, batch: EmbeddedBatch) -> torch.Tensor:
        if batch.history is None or batch.mask is None:
            # the batch size as a tensor dimension, not an int: an exporter keeps it symbolic
            return batch.fields.new_zeros(batch.fields.shape[0], 0, self.dim)
        weights = batch.mask.unsqueeze(-1).to(batch.history.dtype)  # [B, S, L, 1]
        return (batch.history * weights).sum(2) / weights.sum(2).clamp_min(1.0)  # [B, S, d]

    def pooled(self, batch: EmbeddedBatch) -> torch.Tensor:
        """Each history of ``batch`` pooled as ``sequence_pooling`` says: ``[B, S, d]``."""
        if self.attention is None or batch.history is None or batch.mask is None:
            return self._mean_pooled(batch)
        assert self.history_targets is not None
        pooled, _ = self.attention(batch.history, batch.mask, self.history_targets(batch.sparse))  # [B, S, d]
        return pooled

    def all_fields(self, features: Features) -> torch.Tensor:
        """Fields plus pooled histories (``sequence_pooling``): ``[B, F + S, d]``; the input of models
        without a sequence module of their own."""
        batch = self.embed(features)
        return torch.cat([batch.fields, self.pooled(batch)], dim=1)

    @property
    def num_all_fields(self) -> int:
        return self.num_fields + len(self.sequence_names)


@contextmanager
def capturing(embedding: FeatureEmbedding | None) -> Iterator[list[torch.Tensor]]:
    """A list that collects every tensor ``embedding.embed`` returns while the context is active (fields
    ``[B, F, d]``, then histories ``[B, M, L, d]`` where the schema has sequences); stays empty for None."""
    captured: list[torch.Tensor] = []
    if embedding is None:
        yield captured
        return
    embedding.captured = captured
    try:
        yield captured
    finally:
        embedding.captured = None
