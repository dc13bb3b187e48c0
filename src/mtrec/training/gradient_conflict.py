"""Gradient conflict between tasks while training (``train.log_gradient_conflict: true``).

Every ``train.log_every`` optimizer steps, :class:`GradientConflictLogger` measures each task's loss
gradient on the model's shared parameters (``shared_parameters()``, the top layer all tasks share) on a
fixed probe batch of train rows, and the cosine between every two tasks' gradients: below 0, the tasks
pull the shared parameters in opposed directions. The probe runs in eval mode (no dropout, batch norms
read their running statistics and are not updated), so the training run itself is unchanged.

Each epoch's ``history.jsonl`` row holds ``gradient_cosine``: the epoch's measurements, a list of
``{"step": global step, "<a> vs <b>": cosine or null (a task without observed rows in the probe)}``.
Measurements of an epoch interrupted and resumed are kept from the resume on only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtrec.data.batches import Batch, gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.models import MultiTaskModel
from mtrec.objectives.objective import Objective
from mtrec.training.callbacks import TrainerCallback
from mtrec.training.config import ConfigError

if TYPE_CHECKING:
    from mtrec.training.state import TrainState
    from mtrec.training.trainer import FitResult, Trainer

GRADIENT_COSINE = "gradient_cosine"
PROBE_ROWS = 2048  # the most rows of the probe batch


def pair_name(a: str, b: str) -> str:
    return f"{a} vs {b}"


def task_cosines(model: MultiTaskModel, objective: Objective, batch: Batch) -> dict[str, float | None]:
    """The cosine between every two tasks' loss gradients on ``model``'s shared parameters on ``batch``
    (eval mode; None for a pair whose gradient is zero)."""
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    if not shared:
        raise ConfigError(f"train.log_gradient_conflict: model {model.registry_name!r} shares no trained "
                          "parameters between its tasks, so there is no conflict to measure")
    was_training = model.training
    model.eval()
    try:
        losses = objective.losses(model(batch.features), batch)
        grads = []
        for task in model.task_names:
            parts = torch.autograd.grad(losses[task], shared, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                                    for p, g in zip(shared, parts, strict=True)]))  # [P]
    finally:
        model.train(was_training)
    norms = [float(g.norm()) for g in grads]
    result: dict[str, float | None] = {}
    for i, a in enumerate(model.task_names):
        for j in range(i + 1, len(grads)):
            zero = norms[i] == 0 or norms[j] == 0
            result[pair_name(a, model.task_names[j])] = None if zero else \
                float(torch.dot(grads[i], grads[j])) / (norms[i] * norms[j])
    return result


class GradientConflictLogger(TrainerCallback):
    """Measures the task-gradient cosines every ``every`` steps on a probe batch of ``dataset``'s train
    rows (the first :data:`PROBE_ROWS` of a permutation seeded by ``seed``), puts each epoch's into its
    history row and, at the end, writes ``gradient_conflict.png``. Rank 0 only measures."""

    def __init__(self, dataset: PreparedDataset, every: int, seed: int) -> None:
        train = dataset.splits["train"]
        rows = np.random.default_rng(seed).permutation(len(train))[:PROBE_ROWS]
        self.probe = gather_batch(dataset, np.asarray(train)[rows])
        self.every = every
        self.measurements: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Trainer, state: TrainState, terms: dict[str, torch.Tensor] | None) -> None:
        if state.global_step % self.every or not trainer.dist.is_main:
            return
        cosines = task_cosines(trainer.model, trainer.objective, self.probe.to(trainer.device))
        self.measurements.append({"step": state.global_step, **cosines})

    def on_epoch_end(self, trainer: Trainer, state: TrainState, row: dict[str, Any]) -> None:
        row[GRADIENT_COSINE], self.measurements = self.measurements, []
        if trainer.writer is not None:
            trainer.writer.write_history(state.history)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        conflict = read_conflict(result.history)
        if trainer.writer is not None and conflict is not None:
            trainer.writer.write_gradient_conflict(conflict.steps, conflict.cosines)


@dataclass
class Conflict:
    """A run's measurements: the steps ``[S]`` and each task pair's cosines ``[S]`` (NaN: not measurable)."""

    steps: np.ndarray
    cosines: dict[str, np.ndarray]

    def to_json(self) -> dict[str, dict[str, Any]]:
        result = {}
        for pair, c in self.cosines.items():
            measured = c[np.isfinite(c)]
            result[pair] = {"mean": float(measured.mean()) if measured.size else None,
                            "share_negative": float((measured < 0).mean()) if measured.size else None,
                            "measurements": int(measured.size)}
        return result

    def summary(self) -> str:
        return "; ".join(f"{pair}: mean cosine {s['mean']:+.3f}, negative in {s['share_negative']:.0%} of "
                         f"{s['measurements']} measurements" if s["measurements"] else f"{pair}: not measurable"
                         for pair, s in self.to_json().items())


def read_conflict(history: list[dict[str, Any]]) -> Conflict | None:
    """The measurements of a run's history rows in step order, or None when it logged none."""
    rows = [m for epoch in history for m in epoch.get(GRADIENT_COSINE) or []]
    if not rows:
        return None
    pairs = [k for k in rows[0] if k != "step"]
    return Conflict(np.array([m["step"] for m in rows]),
                    {p: np.array([np.nan if m.get(p) is None else m[p] for m in rows], dtype=np.float64)
                     for p in pairs})
