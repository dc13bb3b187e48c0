"""The scoring graph: named input tensors -> each task's prediction, the form that is exported and served.

A model's ``forward`` takes :class:`~mtrec.features.inputs.Features`; exporters and runtimes take flat,
named tensors. :class:`ScoringModule` is the bridge: it builds Features from

    sparse           int64   [B, F_sparse]  ids, fields in schema order
    dense            float32 [B, F_dense]   transformed values, fields in schema order
    seq__<name>      int64   [B, L]         one per sequence feature, in schema order, 0 = padding

and returns the :class:`~mtrec.objectives.scorer.Scorer`'s predictions (a binary task's probability, a
regression task's value) as one ``[B]`` tensor per task, in task order, named after the tasks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtrec.features.inputs import Features
from mtrec.features.schema import DatasetSchema
from mtrec.objectives.scorer import Scorer

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


def feature_inputs(features: Features, schema: DatasetSchema) -> tuple[torch.Tensor, ...]:
    """Features as the scoring graph's positional inputs (int64 ids, float32 values)."""
    return (
        features.sparse.to(torch.int64),
        features.dense.to(torch.float32),
        *(features.sequences[s.name].to(torch.int64) for s in schema.sequences),
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
    """Wraps a scorer: ``(sparse, dense, *sequences) -> (prediction [B] per task)``, in eval mode."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer.eval()
        self.sequence_names = [s.name for s in scorer.schema.sequences]
        self.task_names = output_names(scorer.schema)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, *sequences: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = Features(sparse, dense, dict(zip(self.sequence_names, sequences, strict=True)))
        predictions = self.scorer(features)
        return tuple(predictions[task] for task in self.task_names)
