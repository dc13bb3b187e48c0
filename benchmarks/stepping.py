"""The training step that the benchmarks time: the trainer's own loss (:class:`LossStep`: the model's
default objective, task losses under fixed weights plus any extra terms), then an Adam update (foreach,
as the trainer's on CPU); with ``compile_step`` the loss is compiled in place as ``train.compile`` does.
Shared by the model-bound figures of ``throughput.py``, ``dcrnn_study.py`` and ``dtrn_study.py``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtrec.data.batches import Batch
from mtrec.models import MultiTaskModel
from mtrec.training.build import objective_and_weighting
from mtrec.training.config import TrainConfig
from mtrec.training.precision import FP32, Precision
from mtrec.training.trainer import LossStep


def train_step(model: MultiTaskModel, lr: float = 1e-3, compile_step: bool = False,
               precision: Precision = FP32) -> Callable[[Batch], None]:
    """A function that takes one optimizer step of ``model`` on a batch (its own Adam state);
    ``compile_step``: the loss through ``torch.compile`` (compiled at the first call); ``precision``: what
    the model computes in (as ``train.precision``; bf16 on CPU: no gradient scaler)."""
    objective, weighting = objective_and_weighting(model, TrainConfig())  # the defaults: fixed weights
    loss_step = LossStep(model, objective, weighting, precision)
    if compile_step:
        loss_step.compile_in_place()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)  # as the trainer's on CPU

    def step(batch: Batch) -> None:
        loss, _ = loss_step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
