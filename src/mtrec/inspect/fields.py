"""Per-task field weights (a SENet's, such as DTRN's TRM) and per-(task, behaviour) LayerNorm parameters
(a hypernetwork's, such as DTRN's TIM).

Field weights: :data:`~mtrec.nn.recording.FIELD_WEIGHTS` records ``[n, B, F, 1 or d]`` averaged over rows
(and, per element, over the width): ``[n, F]``. LayerNorm parameters: the last
:data:`~mtrec.nn.recording.NORM_SCALE` / :data:`~mtrec.nn.recording.NORM_SHIFT` records ``[K, M, N, d]``;
how far two (task, behaviour) pairs differ is the mean absolute difference of their scales plus that of
their shifts, over every norm and element.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrec.features.schema import DatasetSchema
from mtrec.inspect.labels import behaviour_labels, block_name, field_labels, unit_labels
from mtrec.inspect.plots import heatmap
from mtrec.nn.recording import FIELD_WEIGHTS, NORM_SCALE, NORM_SHIFT, Record


@dataclass
class FieldWeights:
    """One field-weighting block: unit labels (tasks), field names, mean weight ``[n, F]``."""

    block: str
    units: list[str]
    fields: list[str]
    mean_weight: np.ndarray

    def to_json(self) -> dict[str, dict[str, float]]:
        return {u: dict(zip(self.fields, row.tolist(), strict=True))
                for u, row in zip(self.units, self.mean_weight, strict=True)}

    def summary(self) -> str:
        """The three most and the three least weighted fields of each unit."""
        parts = []
        for unit, row in zip(self.units, self.mean_weight, strict=True):
            order = np.argsort(-row, kind="stable")
            top = ", ".join(f"{self.fields[i]} {row[i]:.2f}" for i in order[:3])
            low = ", ".join(f"{self.fields[i]} {row[i]:.2f}" for i in order[-3:])
            parts.append(f"{unit}: highest {top}; lowest {low}")
        return f"{self.block}: " + "; ".join(parts)


@dataclass
class NormDifferences:
    """One hypernetwork: pair labels (``task / behaviour``) and their distance matrix ``[P, P]``."""

    block: str
    pairs: list[str]
    distance: np.ndarray

    def between(self, same: int) -> float:
        """The mean distance between pairs that share their task (``same=0``) or behaviour (``same=1``)."""
        keys = [p.split(" / ") for p in self.pairs]
        values = [self.distance[a, b] for a in range(len(keys)) for b in range(a + 1, len(keys))
                  if keys[a][same] == keys[b][same]]
        return float(np.mean(values)) if values else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "distance": self.distance.tolist(),
                "mean_between_behaviours_same_task": self.between(0),
                "mean_between_tasks_same_behaviour": self.between(1)}


class FieldCollector:
    """Sums field weights over batches and keeps the last LayerNorm parameters."""

    def __init__(self) -> None:
        self.weight: dict[str, torch.Tensor] = {}  # block -> [n, F]
        self.rows: dict[str, int] = {}
        self.norms: dict[str, dict[str, torch.Tensor]] = {}  # block -> {kind: [K, M, N, d]}

    def add(self, records: list[Record]) -> None:
        for r in records:
            if r.kind == FIELD_WEIGHTS:
                w = r.values.double().mean(-1)  # [n, B, F]
                self.weight[r.block] = self.weight.get(r.block, 0) + w.sum(1)
                self.rows[r.block] = self.rows.get(r.block, 0) + w.shape[1]
            elif r.kind in (NORM_SCALE, NORM_SHIFT):
                self.norms.setdefault(r.block, {})[r.kind] = r.values.double()

    def field_weights(self, schema: DatasetSchema) -> list[FieldWeights]:
        result = []
        for block, total in self.weight.items():
            mean = (total / self.rows[block]).numpy()
            result.append(FieldWeights(block_name(block), unit_labels(mean.shape[0], schema),
                                       field_labels(mean.shape[1], schema), mean))
        return result

    def norm_differences(self, schema: DatasetSchema) -> list[NormDifferences]:
        result = []
        for block, kinds in self.norms.items():
            if set(kinds) != {NORM_SCALE, NORM_SHIFT}:
                continue
            scale, shift = kinds[NORM_SCALE], kinds[NORM_SHIFT]  # [K, M, N, d]
            k, m = scale.shape[:2]
            a, b = scale.reshape(k * m, -1), shift.reshape(k * m, -1)  # [P, N*d]
            distance = ((a[:, None] - a[None]).abs().mean(-1) + (b[:, None] - b[None]).abs().mean(-1)).numpy()
            tasks, behaviours = unit_labels(k, schema, one="task"), behaviour_labels(m, schema)
            pairs = [f"{t} / {beh}" for t in tasks for beh in behaviours]
            result.append(NormDifferences(block_name(block), pairs, distance))
        return result


def plot_field_weights(weights: FieldWeights, path: Path) -> None:
    heatmap(weights.mean_weight, weights.units, weights.fields, path,
            title=f"field weights per task, {weights.block}: mean weight (1 keeps a field, 0 drops it)",
            xlabel="field", ylabel="task", colorbar="mean weight (sigmoid)")


def plot_norm_differences(norms: NormDifferences, path: Path) -> None:
    heatmap(norms.distance, norms.pairs, norms.pairs, path,
            title=f"conditional LayerNorms, {norms.block}: how far two (task / behaviour) pairs differ",
            xlabel="task / behaviour", ylabel="task / behaviour",
            colorbar="mean |Δ scale| + mean |Δ shift|", fmt=".3f")
