"""Per-task binary cross-entropy on logits: masked (each task on its observed rows) or entire-space."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtrec.data.batches import Batch
from mtrec.features.schema import DatasetSchema


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the rows where ``mask`` is 1. All inputs ``[B]``; returns a scalar (0 if none)."""
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def masked_task_losses(logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Each task's masked BCE: a task observed after another is learned on that task's positives."""
    return {task: masked_bce(logits[task], batch.labels[task], batch.masks[task]) for task in batch.labels}


def entire_space_task_losses(
    logits: dict[str, torch.Tensor], batch: Batch, schema: DatasetSchema
) -> dict[str, torch.Tensor]:
    """ESMM's entire-space objective (Ma et al., SIGIR 2018).

    A task observed after another has its logit read as the conditional ``p(task | earlier)``; its loss is
    the BCE of the product ``p(earlier) * p(task | earlier)`` (e.g. ``ctcvr = ctr * cvr``) against the
    stored label (1 only where both happened) over ALL rows, so it is learned in the entire impression
    space rather than on the biased sample of earlier positives. Other tasks: plain BCE on all rows.
    """
    losses: dict[str, torch.Tensor] = {}
    for task in schema.tasks:
        labels = batch.labels[task.name]
        if task.observed_after is None:
            losses[task.name] = F.binary_cross_entropy_with_logits(logits[task.name], labels)
            continue
        # log p(both) = log sigma(a) + log sigma(b); log(1 - p(both)) from it, kept finite
        log_p = F.logsigmoid(logits[task.observed_after]) + F.logsigmoid(logits[task.name])
        log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
        losses[task.name] = -(labels * log_p + (1 - labels) * log_not_p).mean()
    return losses
