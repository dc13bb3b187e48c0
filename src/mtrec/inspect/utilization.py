"""Expert utilization: the mean weight each gate gives each expert, gate entropy, dead experts.

Reads :data:`~mtrec.nn.recording.EXPERT_WEIGHTS` records (``[G, B, E]`` softmax weights): one "level"
per recording block. An expert is *effectively dead* when no gate gives it a mean weight of at least
:data:`DEAD_WEIGHT` (1 %): it receives almost no gradient and adds almost nothing to any task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrec.features.schema import DatasetSchema
from mtrec.inspect.labels import block_name, unit_labels
from mtrec.inspect.plots import heatmap
from mtrec.nn.recording import EXPERT_WEIGHTS, Record

DEAD_WEIGHT = 0.01


@dataclass
class LevelUtilization:
    """One gated level: row labels (tasks, or gates), mean weight ``[G, E]``, mean entropy ``[G]``
    (nats), the largest possible entropy (``log E``) and the dead experts' indices."""

    level: str
    gates: list[str]
    mean_weight: np.ndarray
    entropy: np.ndarray
    max_entropy: float
    dead: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"weights": {g: row.tolist() for g, row in zip(self.gates, self.mean_weight, strict=True)},
                "entropy": dict(zip(self.gates, self.entropy.tolist(), strict=True)),
                "max_entropy": self.max_entropy, "dead_experts": self.dead}


class UtilizationCollector:
    """Sums gate weights and entropies over the batches a report runs."""

    def __init__(self) -> None:
        self.weight: dict[str, torch.Tensor] = {}  # block -> [G, E]
        self.entropy: dict[str, torch.Tensor] = {}  # block -> [G]
        self.rows: dict[str, int] = {}

    def add(self, records: list[Record]) -> None:
        for r in records:
            if r.kind != EXPERT_WEIGHTS:
                continue
            w = r.values.double()  # [G, B, E]
            entropy = -(w * w.clamp_min(1e-30).log()).sum(-1)  # [G, B]
            self.weight[r.block] = self.weight.get(r.block, 0) + w.sum(1)
            self.entropy[r.block] = self.entropy.get(r.block, 0) + entropy.sum(1)
            self.rows[r.block] = self.rows.get(r.block, 0) + w.shape[1]

    def result(self, schema: DatasetSchema) -> list[LevelUtilization]:
        levels = []
        for block, total in self.weight.items():
            mean = (total / self.rows[block]).numpy()  # [G, E]
            levels.append(LevelUtilization(
                block_name(block), unit_labels(mean.shape[0], schema), mean,
                (self.entropy[block] / self.rows[block]).numpy(), math.log(mean.shape[1]),
                [int(e) for e in np.flatnonzero(mean.max(0) < DEAD_WEIGHT)]))
        return levels


def expert_labels(level: LevelUtilization) -> list[str]:
    """``expert e``, with ``(dead)``, or ``(<gate> only)`` when exactly one of several gates mixes it."""
    labels = []
    for e in range(level.mean_weight.shape[1]):
        reached = [g for g, w in zip(level.gates, level.mean_weight[:, e], strict=True) if w > 0]
        own = f"\n({reached[0]} only)" if len(reached) == 1 and len(level.gates) > 1 else ""
        labels.append(f"expert {e}" + (" (dead)" if e in level.dead else own))
    return labels


def plot_level(level: LevelUtilization, path: Path) -> None:
    """The level's tasks × experts heatmap; an expert a gate cannot mix (weight exactly 0) is blank."""
    shown = np.where(level.mean_weight > 0, level.mean_weight, np.nan)
    heatmap(shown, level.gates, expert_labels(level), path,
            title=f"expert utilization, {level.level}\nmean gate weight (each row sums to 1; blank: not in that "
                  "gate's mixture)", xlabel="expert", ylabel="task / gate", colorbar="mean gate weight", floor=0.0)


def summary(level: LevelUtilization) -> str:
    entropy = ", ".join(f"{g} {e:.2f}" for g, e in zip(level.gates, level.entropy, strict=True))
    dead = f"{len(level.dead)} dead ({', '.join(map(str, level.dead))})" if level.dead else "none dead"
    return (f"{level.level}: {level.mean_weight.shape[1]} experts, {dead}; gate entropy {entropy} "
            f"(max {level.max_entropy:.2f})")
