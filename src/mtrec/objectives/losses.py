"""Per-task binary cross-entropy on logits: masked (each task on its observed rows) or entire-space.

Every loss here is a sum of per-row losses divided by :func:`step_mean`'s divisor, so it means the same on
one process and in distributed training (where a batch is one rank's share of the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema


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


def masked_task_losses(logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Each task's BCE over its observed rows: a task observed after another is learned on that task's
    positives."""
    return {
        task: step_mean(F.binary_cross_entropy_with_logits(logits[task], batch.labels[task], reduction="none"),
                        batch, task)
        for task in batch.labels
    }


def entire_space_log_prob(
    logits: dict[str, torch.Tensor], schema: DatasetSchema, task: str
) -> torch.Tensor:
    """``log p(task and every task it is observed after)`` ``[B]``, reading each task's logit as its
    probability given the one it is observed after: the sum of ``logsigmoid`` along the chain
    (conversion after click: ``log(ctr * cvr)``)."""
    log_p = F.logsigmoid(logits[task])
    parent = schema.task(task).observed_after
    while parent is not None:
        log_p = log_p + F.logsigmoid(logits[parent])
        parent = schema.task(parent).observed_after
    return log_p


def log_prob_to_logit(log_p: torch.Tensor) -> torch.Tensor:
    """``logit(p) = log p - log(1 - p)`` from ``log p`` (``[B]``), kept finite as ``p -> 1``."""
    return log_p - torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))


def entire_space_task_losses(
    logits: dict[str, torch.Tensor], batch: Batch, schema: DatasetSchema
) -> dict[str, torch.Tensor]:
    """ESMM's entire-space objective (Ma et al., SIGIR 2018).

    A task observed after another has its logit read as the conditional ``p(task | earlier)``; its loss is
    the BCE of the product along its chain ``p(earlier) * p(task | earlier)`` (e.g. ``ctcvr = ctr * cvr``)
    against the stored label (1 only where both happened) over ALL rows, so it is learned in the entire
    impression space rather than on the biased sample of earlier positives. Other tasks: plain BCE on all
    rows.
    """
    losses: dict[str, torch.Tensor] = {}
    for task in schema.tasks:
        labels = batch.labels[task.name]
        if task.observed_after is None:
            per_row = F.binary_cross_entropy_with_logits(logits[task.name], labels, reduction="none")
        else:
            log_p = entire_space_log_prob(logits, schema, task.name)
            log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
            per_row = -(labels * log_p + (1 - labels) * log_not_p)
        losses[task.name] = step_mean(per_row, batch)
    return losses


def expectation_calibration(later: torch.Tensor, earlier: torch.Tensor, batch: Batch) -> torch.Tensor:
    """AITM's Behavioral Expectation Calibrator (Xi et al., KDD 2021): ``mean(max(p_later - p_earlier,
    0))`` over rows. Probabilities ``[B]`` in the entire space (a conversion cannot be likelier than the
    click it needs); zero wherever the later task's probability is at most the earlier's. The mean is
    :func:`step_mean`'s (padding rows excluded, normalised over the whole distributed step)."""
    return step_mean(torch.relu(later - earlier), batch)
