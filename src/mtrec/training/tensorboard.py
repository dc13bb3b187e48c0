"""Live curves in TensorBoard (``train.log_to: [tensorboard]``, the optional extra ``mtrec[tracking]``).

:class:`TensorBoardLogger` writes with :class:`torch.utils.tensorboard.SummaryWriter` into the run
directory's ``tensorboard/`` (``tensorboard --logdir RUN_DIR``, or a bench's output directory for all its
runs). Every scalar is plotted against the global optimizer step:

- ``loss/<task>`` (and any auxiliary loss term), and ``learning_rate/<optimizer>``, every
  ``train.log_every`` steps;
- per epoch: ``epoch_loss/<task>`` (the epoch's mean), ``valid/<task>/<metric>`` (AUC, GAUC, logloss;
  RMSE, MAE, R²), ``task_weight/<task>`` (the weighting strategy's weights: fixed, uncertainty, GradNorm,
  MetaBalance), ``samples_per_s`` and ``epoch``;
- ``gradient_cosine/<a> vs <b>`` at each measurement (with ``train.log_gradient_conflict``);
- at the end, ``test/<task>/<metric>``.

Only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

import torch

from mtrec.training.callbacks import TrainerCallback
from mtrec.training.config import ConfigError
from mtrec.training.gradient_conflict import GRADIENT_COSINE

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from mtrec.training.rundir import RunDirectory
    from mtrec.training.state import TrainState
    from mtrec.training.trainer import FitResult, Trainer


def available() -> bool:
    """Whether the ``tensorboard`` package (which SummaryWriter needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(TrainerCallback):
    """Writes a run's curves as TensorBoard event files under ``log_dir`` (see the module docstring)."""

    def __init__(self, run_dir: RunDirectory, every: int, resume: bool) -> None:
        """``resume``: add to the run's curves; otherwise the event files of an earlier run in ``run_dir``
        are deleted when training starts."""
        if not available():
            raise ConfigError("train.log_to: tensorboard needs the tensorboard package: "
                              "pip install 'mtrec[tracking]'")
        self.run_dir, self.every, self.resume = run_dir, every, resume
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if not trainer.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        if not self.resume:
            self.run_dir.remove_tensorboard()
        self.writer = SummaryWriter(str(self.run_dir.tensorboard_path))

    def _scalars(self, writer: SummaryWriter, prefix: str, values: dict[str, Any], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, dict):
                self._scalars(writer, f"{prefix}/{name}", value, step)
            elif name != "rows" and value is not None and math.isfinite(float(value)):  # rows: a count
                writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def on_step_end(self, trainer: Trainer, state: TrainState, terms: dict[str, torch.Tensor] | None) -> None:
        if self.writer is None or terms is None or state.global_step % self.every:
            return
        step = state.global_step
        self._scalars(self.writer, "loss", {name: term.item() for name, term in terms.items()}, step)
        self._scalars(self.writer, "learning_rate", {name: optimizer.param_groups[0]["lr"]
                                                     for name, optimizer in trainer.optimizer.optimizers.items()},
                      step)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = state.global_step
        self._scalars(self.writer, "epoch_loss", row["train_loss"], step)
        self._scalars(self.writer, "valid", row["valid"], step)
        self._scalars(self.writer, "task_weight", row["task_weights"], step)
        self._scalars(self.writer, "run", {"samples_per_s": row["samples_per_s"], "epoch": row["epoch"]}, step)
        for measurement in row.get(GRADIENT_COSINE) or []:
            self._scalars(self.writer, GRADIENT_COSINE, {k: v for k, v in measurement.items() if k != "step"},
                          measurement["step"])
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self.writer is None:
            return
        self._scalars(self.writer, "test", result.test, trainer.steps_per_epoch * len(result.history))
        self.writer.close()
        self.writer = None
