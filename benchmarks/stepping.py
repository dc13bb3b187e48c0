"""The training step that the benchmarks time: the trainer's own loss (:class:`LossStep`: task losses
under fixed weights plus the model's extra terms), then an Adam update. Shared by the model-bound
figures of ``throughput.py``, ``dcrnn_study.py`` and ``dtrn_study.py``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtrec.data.batches import Batch
from mtrec.models import MultiTaskModel
from mtrec.objectives.weighting import create_weighting
from mtrec.training.trainer import LossStep


def train_step(model: MultiTaskModel, lr: float = 1e-3) -> Callable[[Batch], None]:
    """A function that takes one optimizer step of ``model`` on a batch (its own Adam state)."""
    loss_step = LossStep(model, create_weighting("fixed", model.task_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)

    def step(batch: Batch) -> None:
        loss, _ = loss_step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
