"""Feature embedding: every sparse field and sequence shares one table, addressed by per-table offsets.

One ``nn.Embedding`` holds all tables stacked; each field's ids are shifted by its table's offset, so a
batch of F sparse fields is one gather, not F. Features that name the same table (a target item and the
items of its behaviour histories) read the same rows. Dense values are projected to width ``d`` per field
(``value * w_f + b_f``), so every field becomes one ``d``-vector.

``table`` is any module that maps stacked ids ``[...]`` to rows ``[..., d]``: the ``nn.Embedding`` here,
or, in a run with ``train.embedding_sharding``, TorchRec tables sharded over the ranks
(:mod:`mtrec.training.sharding`), which split the stacked table by ``tables`` (name -> offset, rows).
Sharded tables apply their update inside the backward pass of each lookup, so there every row a
forward pass needs must come from one call: with ``lookup_once`` set, the first method called on a
batch's features looks up its sparse fields and all its histories together and the others reuse those
rows until :meth:`forget_rows` (which the sharded run calls around each forward pass of the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema


class FeatureEmbedding(nn.Module):
    """Embeds a batch's fields to ``[B, F, d]`` (F = sparse + dense fields) and its sequences."""

    sparse_offsets: torch.Tensor

    def __init__(self, schema: DatasetSchema, dim: int) -> None:
        super().__init__()
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
        self.sparse_index = {f.name: i for i, f in enumerate(schema.sparse)}
        n_dense = len(schema.dense)
        self.dense_weight = nn.Parameter(torch.randn(n_dense, dim) * 0.05)
        self.dense_bias = nn.Parameter(torch.zeros(n_dense, dim))
        self.num_sparse = len(schema.sparse)
        self.num_fields = self.num_sparse + n_dense
        self.lookup_once = False
        self._rows: tuple[Features, torch.Tensor, torch.Tensor | None] | None = None

    def forget_rows(self) -> None:
        """Drop the rows kept by ``lookup_once`` (the next call looks its features up again)."""
        self._rows = None

    def _batch_rows(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``lookup_once``: sparse rows ``[B, F_sparse, d]`` and stacked history rows ``[B, M, L, d]`` (None
        without histories) of ``features`` from one table call, kept for the following calls on them."""
        if self._rows is None or self._rows[0] is not features:
            sparse = features.sparse + self.sparse_offsets  # [B, F_sparse]
            if not self.sequence_names:
                self._rows = (features, self.table(sparse), None)
            else:
                history = self._stacked_ids(features)  # [B, M, L]
                history = history + self._history_offsets(history.device).view(1, -1, 1)
                rows = self.table(torch.cat([sparse, history.flatten(1)], dim=1))  # [B, F_sparse + M*L, d]
                self._rows = (features, rows[:, : self.num_sparse],
                              rows[:, self.num_sparse :].view(*history.shape, -1))
        return self._rows[1], self._rows[2]

    def _stacked_ids(self, features: Features) -> torch.Tensor:
        """All histories' ids ``[B, M, L]``, each padded with 0 to the longest length L."""
        blocks = [features.sequences[n] for n in self.sequence_names]
        length = max(b.shape[1] for b in blocks)
        return torch.stack([F.pad(b, (0, length - b.shape[1])) for b in blocks], dim=1)  # [B, M, L]

    def _history_offsets(self, device: torch.device) -> torch.Tensor:
        """Each history's table offset ``[M]``."""
        return torch.tensor([self.sequence_offsets[n] for n in self.sequence_names], device=device)

    def sparse_fields(self, features: Features) -> torch.Tensor:
        """Sparse field embeddings ``[B, F_sparse, d]`` (one gather)."""
        if self.lookup_once:
            return self._batch_rows(features)[0]
        return self.table(features.sparse + self.sparse_offsets)

    def fields(self, features: Features) -> torch.Tensor:
        """Sparse then dense field embeddings ``[B, F, d]``."""
        dense = features.dense.unsqueeze(-1) * self.dense_weight + self.dense_bias  # [B, F_dense, d]
        return torch.cat([self.sparse_fields(features), dense], dim=1)

    def sequence(self, features: Features, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A history's item embeddings ``[B, L, d]`` and its validity mask ``[B, L]`` (False = padding)."""
        ids = features.sequences[name]
        if self.lookup_once:
            history = self._batch_rows(features)[1]
            assert history is not None
            return history[:, self.sequence_names.index(name), : ids.shape[1]], ids > 0
        return self.table(ids + self.sequence_offsets[name]), ids > 0

    def sequences(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """All histories stacked: embeddings ``[B, M, L, d]`` and mask ``[B, M, L]``; L is the longest
        history's length, shorter ones are padded (mask False)."""
        ids = self._stacked_ids(features)  # [B, M, L]
        if self.lookup_once:
            history = self._batch_rows(features)[1]
            assert history is not None
            return history, ids > 0
        return self.table(ids + self._history_offsets(ids.device).view(1, -1, 1)), ids > 0

    def mean_pooled_sequences(self, features: Features) -> torch.Tensor:
        """Each history mean-pooled over its valid positions: ``[B, S, d]`` (zeros for an empty one)."""
        pooled = []
        for name in self.sequence_names:
            emb, mask = self.sequence(features, name)  # [B, L, d], [B, L]
            weights = mask.unsqueeze(-1).to(emb.dtype)
            pooled.append((emb * weights).sum(1) / weights.sum(1).clamp_min(1.0))
        # the batch size as a tensor dimension, not an int: an exporter keeps it symbolic
        return torch.stack(pooled, dim=1) if pooled else features.dense.new_zeros(features.dense.shape[0], 0, self.dim)

    def all_fields(self, features: Features) -> torch.Tensor:
        """Fields plus mean-pooled histories: ``[B, F + S, d]``; the input of models without a
        sequence module of their own."""
        return torch.cat([self.fields(features), self.mean_pooled_sequences(features)], dim=1)

    @property
    def num_all_fields(self) -> int:
        return self.num_fields + len(self.sequence_names)
