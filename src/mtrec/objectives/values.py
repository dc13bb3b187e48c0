"""Value tasks: the label transforms and the zero-inflated lognormal (ZILN) distribution.

A regression task's head learns in the units its loss works in; everything evaluated and served is in the
label's own units:

- ``mse`` / ``huber`` with ``transform: log1p``: the head predicts ``log(1 + value)``; the value given back
  is ``expm1`` of it (the inverse of the transform, which for a skewed target lies below its mean: the
  squared error is minimised in log units).
- ``ziln`` (Wang, Liu & Miao 2019, "A Deep Probabilistic Model for Customer Lifetime Value Prediction"):
  the head's three outputs ``[B, 3]`` are the logit of ``p = P(value > 0)``, the mean ``mu`` and the raw
  scale of ``log(value)`` given ``value > 0``; ``sigma = softplus(raw)``, at least
  :data:`MIN_SIGMA` (the paper's choice of a softplus with a small floor). The value given back is the
  distribution's mean ``p * exp(mu + sigma**2 / 2)``. The head starts near ``mu = 0``: values whose
  logarithm is far from 0 take more steps to fit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtrec.features.schema import TaskSpec

MIN_SIGMA = 1e-3
HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def ziln_parts(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ZILN head's ``[B, 3]`` output as (logit of ``P(value > 0)``, ``mu``, ``sigma``), each ``[B]``."""
    logit, mu, raw_sigma = output.unbind(-1)
    return logit, mu, F.softplus(raw_sigma).clamp_min(MIN_SIGMA)


def ziln_expected_value(output: torch.Tensor) -> torch.Tensor:
    """``E[value] = sigmoid(logit) * exp(mu + sigma**2 / 2)`` ``[B]`` of a ZILN head's output ``[B, 3]``."""
    logit, mu, sigma = ziln_parts(output)
    return torch.sigmoid(logit) * torch.exp(mu + 0.5 * sigma**2)


def ziln_loss(output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The ZILN negative log-likelihood per row ``[B]`` of values ``[B]`` (>= 0): the BCE of ``value >
    0`` on the logit, plus, where the value is positive, the lognormal's ``-log density`` of the value."""
    logit, mu, sigma = ziln_parts(output)
    positive = value > 0
    classification = F.binary_cross_entropy_with_logits(logit, positive.to(logit.dtype), reduction="none")
    log_value = torch.log(torch.where(positive, value, torch.ones_like(value)))
    nll = log_value + torch.log(sigma) + HALF_LOG_TWO_PI + 0.5 * ((log_value - mu) / sigma) ** 2
    return classification + torch.where(positive, nll, torch.zeros_like(nll))


def head_value(task: TaskSpec, output: torch.Tensor) -> torch.Tensor:
    """A regression task's value ``[B]`` in the label's own units from its head's output (``[B]``, or
    ``[B, 3]`` for ZILN): the ZILN mean, or the head's output with the task's transform inverted."""
    if task.loss_name == "ziln":
        return ziln_expected_value(output)
    return torch.expm1(output) if task.transform == "log1p" else output


def label_units(task: TaskSpec, labels: torch.Tensor) -> torch.Tensor:
    """Stored labels ``[B]`` of a regression task (transformed at preparation) in the label's own units."""
    return torch.expm1(labels) if task.transform == "log1p" else labels

