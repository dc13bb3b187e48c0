"""Per-row loss terms and the step mean every objective divides by.

Every loss here is a sum of per-row losses divided by :func:`step_mean`'s divisor, so it means the same on
one process and in distributed training (where a batch is one rank's share of the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema, TaskSpec
from mtrec.objectives.values import ziln_loss


def step_mean(per_row: torch.Tensor, batch: Batch, task: str | None = None) -> torch.Tensor:
    """Mean of per-row losses ``[B]`` over the task's observed rows (``task`` given) or over all real rows
    (``task=None``; padding rows excluded). Returns a scalar (0 if no row counts).

    On one process this is the batch's own mean. In distributed training the sum over this rank's rows is
    divided by the count over the whole step (all ranks) divided by the world size, so that DDP's average
    of the ranks' gradients is exactly the gradient of the step's mean; a mean per rank averaged over
    ranks (a mean of means) would weight the rows of a rank with few observed labels more.
    """
    weights = batch.masks[task] if task is not None else batch.row_weights()
    total = (per_row * weights).sum()
    shard = batch.shard
    if shard is None:
        return total / weights.sum().clamp_min(1.0)
    count = shard.step_observed[task] if task is not None else shard.step_rows
    return total * (shard.world_size / max(count, 1.0))


def per_row_loss(task: TaskSpec, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The task's loss per row ``[B]``: BCE on the logit (binary); squared error or Huber loss (delta 1)
    of the head's output against the stored (transformed) label, or the ZILN negative log-likelihood of
    the value from the head's ``[B, 3]`` output (regression)."""
    if task.is_binary:
        return F.binary_cross_entropy_with_logits(output, label, reduction="none")
    if task.loss_name == "ziln":
        return ziln_loss(output, label)
    if task.loss_name == "huber":
        return F.huber_loss(output, label, reduction="none")
    return F.mse_loss(output, label, reduction="none")


def entire_space_log_prob(logits: dict[str, torch.Tensor], schema: DatasetSchema, task: str) -> torch.Tensor:
    """``log p(task and every task it is observed after)`` ``[B]``, reading each task's logit as its
    probability given the one it is observed after: the sum of ``logsigmoid`` along the chain
    (conversion after click: ``log(ctr * cvr)``)."""
    log_p = F.logsigmoid(logits[task])
    parent = schema.task(task).observed_after
    while parent is not None:
        log_p = log_p + F.logsigmoid(logits[parent])
        parent = schema.task(parent).observed_after
    return log_p


def log_one_minus_exp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - p)`` from ``log p`` (``[B]``), kept finite as ``p -> 1``."""
    return torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))


def expectation_calibration(later: torch.Tensor, earlier: torch.Tensor, batch: Batch) -> torch.Tensor:
    """AITM's Behavioral Expectation Calibrator (Xi et al., KDD 2021): ``mean(max(p_later - p_earlier,
    0))`` over rows. Probabilities ``[B]`` in the entire space (a conversion cannot be likelier than the
    click it needs); zero wherever the later task's probability is at most the earlier's. The mean is
    :func:`step_mean`'s (padding rows excluded, normalised over the whole distributed step)."""
    return step_mean(torch.relu(later - earlier), batch)
