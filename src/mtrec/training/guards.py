"""The trainer's guards: a non-finite loss or weight stops the run before anything is written from it, and
a training loss that grew far beyond its start is reported as divergence.

:class:`Guards` reads the :class:`~mtrec.training.nonfinite.LossWatch` the step records into; every check
that reads it is a collective (every rank calls it at the same point).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mtrec import collectives
from mtrec.models import MultiTaskModel
from mtrec.objectives.weighting import WeightingStrategy
from mtrec.training.config import TrainConfig
from mtrec.training.nonfinite import (
    TOTAL,
    LossWatch,
    NonFiniteLossError,
    NonFiniteParametersError,
    nonfinite_parameters,
)
from mtrec.training.state import TrainState

# an epoch whose mean train loss of a task exceeds this many times the task's loss at the first step has
# diverged (a learning rate far too high: the model ends up no better than chance, without a NaN)
DIVERGED = 10.0


class Guards:
    """Checks of the losses and weights of one run of ``model``."""

    def __init__(self, config: TrainConfig, model: MultiTaskModel, weighting: WeightingStrategy,
                 device: torch.device, log: Callable[[str], None]) -> None:
        self.config = config
        self.model = model
        self.weighting = weighting
        self.device = device
        self.log = log
        self.watch = LossWatch(device)

    def check_losses(self, steps_per_epoch: int, checkpoint: Path | None) -> None:
        """Raise NonFiniteLossError if any rank saw a non-finite loss (stop mode; a collective).
        ``checkpoint``: the last good resume checkpoint, named in the error (None: there is none)."""
        if self.config.on_nonfinite != "stop":
            return
        failure = self.watch.first_failure()
        if failure is None:
            return
        step, names = failure
        epoch, in_epoch = divmod(step, max(steps_per_epoch, 1))
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint is not None else ""
        raise NonFiniteLossError(
            f"non-finite loss of {self.describe(names)} at epoch {epoch} step {in_epoch} "
            f"(optimizer step {step}); stopped before writing anything from it{where}. Lower train.lr, "
            f"check the data for NaN/inf values, or set train.on_nonfinite: skip to skip such batches"
        )

    def describe(self, names: list[str]) -> str:
        """``task 'conversion'``, ``tasks 'click', 'conversion'``, ``loss term 'aux'``; the weighted total
        only when no term itself was bad."""
        terms = [n for n in names if n != TOTAL] or names
        tasks = [repr(n) for n in terms if n in self.model.task_names]
        others = [repr(n) for n in terms if n not in self.model.task_names]
        parts = [f"task{'s' * (len(tasks) > 1)} {', '.join(tasks)}"] if tasks else []
        parts += [f"loss term{'s' * (len(others) > 1)} {', '.join(others)}"] if others else []
        return " and ".join(parts)

    def check_divergence(self, state: TrainState, train_loss: dict[str, float]) -> None:
        """Warn (in the log and the run's metrics) when an epoch's train loss has grown far beyond the
        loss at the first step: training diverged, so its model is no better than chance."""
        for task, loss in train_loss.items():
            first = state.first_loss.get(task)
            if first is None or task in state.diverged or not loss > DIVERGED * max(first, 1e-3):
                continue
            state.diverged.append(task)
            warning = (f"training diverged: epoch {state.epoch} train loss of task {task!r} is {loss:.3g}, "
                       f"{loss / max(first, 1e-3):.3g} times its loss at the first step ({first:.3g}); "
                       f"lower train.lr (now {self.config.lr:g})")
            state.warnings.append(warning)
            self.log(f"warning: {warning}")

    def check_parameters(self) -> None:
        """Refuse to go on (and so to write) with non-finite weights, whatever the losses said."""
        bad = nonfinite_parameters(self.model) + [f"weighting.{n}" for n in nonfinite_parameters(self.weighting)]
        # a collective: with sharded tables a rank may hold the only bad shard
        if collectives.all_reduce_(torch.tensor([len(bad)], device=self.device), "max").item():
            raise NonFiniteParametersError(
                f"parameters became non-finite (first: {bad[:3] or 'on another rank'}) although every loss was "
                f"finite; nothing was written from them. Lower train.lr"
            )
