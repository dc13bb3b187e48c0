"""The scoring graph: named input tensors -> each task's probability, the form that is exported and served.

A model's ``forward`` takes a :class:`~mtrec.data.batches.Batch`; exporters and runtimes take flat, named
tensors. :class:`ScoringModule` is the bridge: it rebuilds a Batch from

    sparse           int64   [B, F_sparse]  ids, fields in schema order
    dense            float32 [B, F_dense]   transformed values, fields in schema order
    seq__<name>      int64   [B, L]         one per sequence feature, in schema order, 0 = padding

and returns ``model.probabilities(model(batch))`` as one ``[B]`` tensor per task, in task order, named
after the tasks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema
from mtrec.models import MultiTaskModel

SPARSE_INPUT = "sparse"
DENSE_INPUT = "dense"
SEQUENCE_PREFIX = "seq__"


def input_names(schema: DatasetSchema) -> list[str]:
    """The scoring graph's input names, in positional order."""
    return [SPARSE_INPUT, DENSE_INPUT, *(SEQUENCE_PREFIX + s.name for s in schema.sequences)]


def output_names(schema: DatasetSchema) -> list[str]:
    """The scoring graph's output names: the task names, in task order."""
    clash = sorted(set(schema.task_names) & set(input_names(schema)))
    if clash:
        raise ValueError(f"task name(s) {clash} collide with input names; rename the task(s)")
    return schema.task_names


def batch_inputs(batch: Batch, schema: DatasetSchema) -> tuple[torch.Tensor, ...]:
    """A Batch as the scoring graph's positional inputs (int64 ids, float32 values)."""
    return (
        batch.sparse.to(torch.int64),
        batch.dense.to(torch.float32),
        *(batch.sequences[s.name].to(torch.int64) for s in schema.sequences),
    )


def array_feeds(
    sparse: np.ndarray, dense: np.ndarray, sequences: dict[str, np.ndarray], schema: DatasetSchema
) -> dict[str, np.ndarray]:
    """Encoded arrays as named inputs with the graph's dtypes (ids int64, values float32)."""
    feeds: dict[str, np.ndarray] = {
        SPARSE_INPUT: np.ascontiguousarray(sparse, dtype=np.int64),
        DENSE_INPUT: np.ascontiguousarray(dense, dtype=np.float32),
    }
    for s in schema.sequences:
        feeds[SEQUENCE_PREFIX + s.name] = np.ascontiguousarray(sequences[s.name], dtype=np.int64)
    return feeds


class ScoringModule(nn.Module):
    """Wraps a model: ``(sparse, dense, *sequences) -> (probability [B] per task)``, in eval mode."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.sequence_names = [s.name for s in model.schema.sequences]
        self.task_names = output_names(model.schema)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, *sequences: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = Batch(sparse=sparse, dense=dense, sequences=dict(zip(self.sequence_names, sequences, strict=True)))
        probs = self.model.probabilities(self.model(batch))
        return tuple(probs[task] for task in self.task_names)
