"""The scoring graph: named input tensors -> each task's prediction, the form that is exported and served.

A model's ``forward`` takes :class:`~mtrec.features.inputs.Features`; exporters and runtimes take flat,
named tensors (their names and NumPy form are in :mod:`mtrec.export.model_file`, which needs no torch).
:class:`ScoringModule` is the bridge: it builds Features from

    sparse           int64   [B, F_sparse]  ids, fields in schema order
    dense            float32 [B, F_dense]   transformed values, fields in schema order
    seq__<name>      int64   [B, L]         one per sequence feature, in schema order, 0 = padding

and returns the :class:`~mtrec.objectives.scorer.Scorer`'s predictions (a binary task's probability, a
regression task's value) as one ``[B]`` tensor per task, in task order, named after the tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.export.model_file import output_names
from mtrec.features.inputs import Features, features_of
from mtrec.features.schema import DatasetSchema
from mtrec.objectives.scorer import Scorer


def feature_inputs(features: Features, schema: DatasetSchema) -> tuple[torch.Tensor, ...]:
    """Features as the scoring graph's positional inputs (int64 ids, float32 values)."""
    return (
        features.sparse.to(torch.int64),
        features.dense.to(torch.float32),
        *(features.sequences[s.name].to(torch.int64) for s in schema.sequences),
    )


class ScoringModule(nn.Module):
    """Wraps a scorer: ``(sparse, dense, *sequences) -> (prediction [B] per task)``, in eval mode."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer.eval()
        self.sequence_names = [s.name for s in scorer.schema.sequences]
        self.task_names = output_names(scorer.schema)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, *sequences: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = features_of(self.scorer.schema, sparse, dense,
                                dict(zip(self.sequence_names, sequences, strict=True)))
        predictions = self.scorer(features)
        return tuple(predictions[task] for task in self.task_names)
