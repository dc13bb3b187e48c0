"""What a model reads: one batch of feature tensors, without labels (``Features``).

Models take ``Features`` and return logits; the training ``Batch`` (:mod:`mtrec.data.batches`) adds
labels, masks and sharding information around them, and export and serving build ``Features`` directly
from named arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mtrec.features.schema import DatasetSchema


@dataclass
class Features:
    """B rows of model input, in schema order.

    sparse:    int64   [B, F_sparse]   ids (0 = padding, 1 = out-of-vocabulary)
    dense:     float32 [B, F_dense]
    sequences: name -> int64 [B, L]    behaviour histories, left-aligned, 0 = padding
    scenario:  int64   [B]             the scenario's ids (its sparse column, see
                                       :attr:`DatasetSchema.scenario`), None for a dataset without one
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    sequences: dict[str, torch.Tensor] = field(default_factory=dict)
    scenario: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.sparse.shape[0] if self.sparse.numel() else self.dense.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Features:
        return Features(
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            sequences={k: v.to(device, non_blocking=non_blocking) for k, v in self.sequences.items()},
            scenario=None if self.scenario is None else self.scenario.to(device, non_blocking=non_blocking),
        )


def scenario_ids(schema: DatasetSchema, sparse: torch.Tensor) -> torch.Tensor | None:
    """The scenario ids ``[B]`` in a sparse block ``[B, F_sparse]``; None where the schema has no scenario."""
    column = schema.scenario_column
    return None if column is None else sparse[:, column]


def features_of(schema: DatasetSchema, sparse: torch.Tensor, dense: torch.Tensor,
                sequences: dict[str, torch.Tensor]) -> Features:
    """Features of a schema's blocks, the scenario ids taken from the sparse block."""
    return Features(sparse, dense, sequences, scenario_ids(schema, sparse))
