"""Cross-RNN steps: the mean update gate per task and step, and the step where the tasks' states part.

Reads :data:`~mtrec.nn.recording.CROSS_GATE` and :data:`~mtrec.nn.recording.CROSS_STATE` records, one
pair per step in the order the steps ran. A block records ``[n, B, D]`` per step:

- a block with one unit per task (``n`` = number of tasks) runs one recurrence per task;
- a block with one unit whose path ends in ``.<k>`` among as many such siblings as there are tasks is task
  ``k``'s own part and continues that task's recurrence;
- any other single-unit block is shared: its steps are on every task's path.

Task ``t``'s path is the shared steps followed by its own. At each step index the tasks' states are
compared pairwise by their relative distance ``|h_a - h_b| / mean(|h_a|, |h_b|)`` averaged over rows;
the tasks *part* at the first step where it exceeds :data:`PART_DISTANCE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from mtrec.features.schema import DatasetSchema
from mtrec.inspect.plots import heatmap, save
from mtrec.nn.recording import CROSS_GATE, CROSS_STATE, Record

PART_DISTANCE = 1e-3
_INDEXED = re.compile(r"^(.*)\.(\d+)$")


@dataclass
class CrossSteps:
    """Mean gate ``[T, S]`` per task and step, the mean pairwise relative state distance ``[S]`` and the
    1-based step where the states part (None: they never do)."""

    tasks: list[str]
    gate: np.ndarray
    distance: np.ndarray
    parts_at: int | None

    def to_json(self) -> dict[str, Any]:
        return {"gate": {t: row.tolist() for t, row in zip(self.tasks, self.gate, strict=True)},
                "state_distance": self.distance.tolist(), "states_part_at_step": self.parts_at}


@dataclass
class _Sums:
    gate: list[torch.Tensor] = field(default_factory=list)  # per step: [T] sums over rows
    distance: list[torch.Tensor] = field(default_factory=list)  # per step: sum over rows


class CrossCollector:
    """Builds each task's path of steps from every batch's records and sums gates and distances."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self.sums = _Sums()
        self.rows = 0

    def _owner(self, block: str, blocks: list[str]) -> int | None:
        """The task index a single-unit block belongs to, or None when it is shared."""
        match = _INDEXED.match(block)
        if match is None:
            return None
        siblings = [b for b in blocks if (m := _INDEXED.match(b)) is not None and m.group(1) == match.group(1)]
        return int(match.group(2)) if len(siblings) == self.num_tasks else None

    def add(self, records: list[Record]) -> None:
        gates = [r for r in records if r.kind == CROSS_GATE]
        states = [r for r in records if r.kind == CROSS_STATE]
        if not gates:
            return
        blocks = list(dict.fromkeys(r.block for r in gates))
        T = self.num_tasks
        paths: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(T)]
        shared: list[tuple[torch.Tensor, torch.Tensor]] = []
        for g, h in zip(gates, states, strict=True):
            n = g.values.shape[0]
            if n == T and T > 1:
                for t in range(T):
                    paths[t].append((g.values[t], h.values[t]))
                continue
            owner = self._owner(g.block, blocks)
            if owner is None:
                shared.append((g.values[0], h.values[0]))
            else:
                paths[owner].append((g.values[0], h.values[0]))
        full = [shared + own for own in paths]
        steps = min(len(p) for p in full)
        for s in range(steps):
            gate = torch.stack([full[t][s][0].double().mean(-1) for t in range(T)])  # [T, B]
            state = torch.stack([full[t][s][1].double() for t in range(T)])  # [T, B, D]
            norm = state.norm(dim=-1)  # [T, B]
            pair = [((state[a] - state[b]).norm(dim=-1) / ((norm[a] + norm[b]) / 2).clamp_min(1e-12))
                    for a in range(T) for b in range(a + 1, T)]
            distance = torch.stack(pair).mean(0) if pair else torch.zeros_like(norm[0])  # [B]
            if s == len(self.sums.gate):
                self.sums.gate.append(gate.sum(1))
                self.sums.distance.append(distance.sum())
            else:
                self.sums.gate[s] += gate.sum(1)
                self.sums.distance[s] += distance.sum()
        self.rows += gates[0].values.shape[1]

    def result(self, schema: DatasetSchema) -> CrossSteps | None:
        if not self.sums.gate:
            return None
        gate = (torch.stack(self.sums.gate, dim=1) / self.rows).numpy()  # [T, S]
        distance = (torch.stack(self.sums.distance) / self.rows).numpy()  # [S]
        apart = np.flatnonzero(distance > PART_DISTANCE)
        return CrossSteps(schema.task_names, gate, distance, int(apart[0]) + 1 if apart.size else None)


def plot_cross(steps: CrossSteps, gate_path: Path, distance_path: Path) -> None:
    names = [f"step {s + 1}" for s in range(steps.gate.shape[1])]
    heatmap(steps.gate, steps.tasks, names, gate_path,
            title="cross steps: mean update gate per task and step (0 keeps the state, 1 takes the cross)",
            xlabel="cross step (in the order run)", ylabel="task", colorbar="mean gate value", fmt=".3f")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(range(1, len(steps.distance) + 1), steps.distance, marker="o")
    if steps.parts_at is not None:
        ax.axvline(steps.parts_at, color="grey", linestyle="--", label=f"states part at step {steps.parts_at}")
        ax.legend()
    ax.set(title="how far apart the tasks' cross states are, by step", xlabel="cross step",
           ylabel="mean relative distance\nbetween task states", xticks=range(1, len(steps.distance) + 1))
    ax.grid(alpha=0.3)
    save(fig, distance_path)


def summary(steps: CrossSteps) -> str:
    where = f"part at step {steps.parts_at}" if steps.parts_at else "never part (one shared state)"
    gates = "; ".join(f"{t} " + " ".join(f"{v:.2f}" for v in row) for t, row in zip(steps.tasks, steps.gate,
                                                                                   strict=True))
    return f"{steps.gate.shape[1]} steps, the tasks' states {where}; mean gate per step: {gates}"
