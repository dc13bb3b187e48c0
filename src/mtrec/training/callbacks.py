"""Early stopping on the validation scores, and the hooks through which other code watches the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mtrec.training.state import TrainState
    from mtrec.training.trainer import FitResult, Trainer


@dataclass
class EarlyStopping:
    """Tracks the best (higher) validation score of each selection key and stops once more than
    ``patience`` consecutive epochs improved none of them.

    The keys are ``["mean"]`` (``train.select: mean``: one score, the mean over tasks) or the task names
    (``per_task``: each task selects its own epoch; training goes on while any task still improves).
    """

    patience: int
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)
    bad_epochs: int = 0

    def update(self, scores: dict[str, float], epoch: int) -> list[str]:
        """Record an epoch's scores; the keys for which it is the best so far (an epoch is the best of a
        key it is the first epoch of, even when the score is undefined, e.g. a split without positives)."""
        improved = [k for k, score in scores.items()
                    if k not in self.best_epoch or score > self.best.get(k, -math.inf)]
        for key in improved:
            self.best[key], self.best_epoch[key] = scores[key], epoch
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > self.patience


class TrainerCallback:
    """Hooks into the training loop, for what watches a run without changing it (a pruner, a logger).

    Subclass it and override the hooks you need; pass instances as ``Trainer(..., callbacks=[...])`` or
    ``train_run(..., callbacks=[...])``. Every rank calls every hook (check ``trainer.dist.is_main`` before
    writing anything). The hooks receive the :class:`~mtrec.training.trainer.Trainer` (its ``model``,
    ``optimizer``, ``config``, ...) and its :class:`~mtrec.training.state.TrainState`:

    - :meth:`on_fit_start` once the state to start from is known (a resume checkpoint read, checked and
      loaded), before anything is written to the run directory.
    - :meth:`on_step_end` after each optimizer step, with the step's loss terms (task losses and any
      auxiliary terms, scalar tensors, detached; None when the batch was skipped for a non-finite loss).
      Gradients are still on the parameters then.
    - :meth:`on_epoch_end` after each epoch's validation, with the row it appended to ``history.jsonl``
      (``epoch``, ``train_loss``, ``valid``, ``valid_score``, ``samples_per_s``, ``task_weights``).
      An exception raised here (e.g. Optuna's ``TrialPruned``) ends the run; the resume checkpoint of the
      epoch has been written.
    - :meth:`on_fit_end` once training and the test evaluation are done, with the ``FitResult``.
    """

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        """Before training starts (or continues from ``state``), before anything is written."""

    def on_step_end(self, trainer: Trainer, state: TrainState, terms: dict[str, torch.Tensor] | None) -> None:
        """After an optimizer step (``terms`` None: the batch was skipped)."""

    def on_epoch_end(self, trainer: Trainer, state: TrainState, row: dict[str, Any]) -> None:
        """After an epoch's validation and checkpoint, with its history row."""

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        """After the test evaluation."""
