"""Per-task binary cross-entropy on logits, with label masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtrec.data.batches import Batch


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the rows where ``mask`` is 1. All inputs ``[B]``; returns a scalar (0 if none)."""
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def masked_task_losses(logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Each task's masked BCE: a task observed after another is learned on that task's positives."""
    return {task: masked_bce(logits[task], batch.labels[task], batch.masks[task]) for task in batch.labels}
