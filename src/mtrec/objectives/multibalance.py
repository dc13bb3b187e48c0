"""MultiBalance: MetaBalance's magnitude balancing on the shared representation instead of the shared
parameters (He, Chen, Xu, Cai, You, Cao, Huang, Yang, Liu, Liu, Jin, Park, Long & Feng, Meta, 2024,
"MultiBalance: Multi-Objective Gradient Balancing in Industrial-Scale Multi-Task Recommendation System").

The shared parameters of a recommendation model are mostly its embedding tables, so per-task gradients
over them (MetaBalance, :mod:`~mtrec.objectives.gradient_balancing`) cost one all-reduce of ``[T, P]`` per
step. The gradients of the task losses with respect to the representation ``Z`` the tasks share are far
smaller (``[T, B, F, d]`` for a batch of B rows), stay on their rank (each rank holds its own rows; only
their squared norms ``[T]`` are summed over the ranks), and, balanced there, reach every shared
parameter below ``Z`` through the ordinary backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec import collectives
from mtrec.objectives.gradient_balancing import MagnitudeBalancer, linear_surrogate
from mtrec.objectives.gradients import task_gradients
from mtrec.objectives.weighting import WeightingConfigError, register_weighting


def step_norms(grads: torch.Tensor) -> torch.Tensor:
    """The norms ``[T]`` of the whole step's task gradients on the representation, from this rank's
    ``grads`` ``[T, Z]`` (its own rows of ``Z``).

    A rank's task loss is its rows' share of the step's mean times the world size W
    (:func:`~mtrec.objectives.losses.step_mean`), so its gradient on its rows is W times the step loss's:
    the step's squared norm is the sum over the ranks of theirs divided by W^2 (one all-reduce of ``[T]``).
    """
    squared = (grads * grads).sum(1)  # [T]
    world_size = collectives.world_size()
    if world_size == 1:
        return squared.sqrt()
    return collectives.all_reduce_(squared.clone()).sqrt() / world_size


@register_weighting("multibalance")
class MultiBalance(MagnitudeBalancer):
    """MultiBalance: the task gradients ``g_k = dL_k/dZ`` on the shared representation ``Z`` are balanced
    by MetaBalance's rule (:class:`~mtrec.objectives.gradient_balancing.MagnitudeBalancer`: moving averages
    of their norms, ``relax``, toward the ``main`` task's), and ``Z`` passes ``sum_k s_k g_k`` down to the
    shared parameters below it. The losses are summed, and every parameter above ``Z`` (the towers, and
    any shared layers between ``Z`` and the towers) gets its plain gradient of ``sum_k L_k``.

    The returned loss is the surrogate ``sum_k L_k + <c, Z> - sg(<c, Z>)`` with the constant
    ``c = sum_k (s_k - 1) g_k``: its value is the summed loss, its gradient on ``Z`` is ``sum_k s_k g_k``.
    The scales come from the step's norms (:func:`step_norms`), the same on every rank, so under data
    parallelism DDP's average of the ranks' gradients is the one-process update.

    Choices where the paper leaves room: ``Z`` is the output of the model's feature embedding (its
    ``shared_representation()``: the embedded fields and histories, the representation every model has),
    so the balanced gradients train the embedding tables, which hold almost all shared parameters; the
    norms are of the whole step's gradient on ``Z`` (all rows together, not per row); the target is the
    main task's averaged norm, as in MetaBalance. Needs the task gradients, so no torch.compile (refused in
    the config) and no fp16.
    """

    name = "multibalance"
    reads_gradients = True
    reads_representation = True

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        losses = torch.stack([task_losses[t] for t in self.task_names])  # [T]
        loss = losses.sum()
        if not (torch.is_grad_enabled() and losses.requires_grad):
            return loss
        tensors = [z for z in representation if z.requires_grad]
        if not tensors:
            raise WeightingConfigError("multibalance needs a model whose tasks share a representation; this "
                                       "model has none that trains (its shared_representation() is None): use "
                                       "the fixed or uncertainty weighting")
        grads = task_gradients(list(losses.unbind()), tensors).float()  # [T, Z]
        with torch.no_grad():
            correction = (self.balance(step_norms(grads)) - 1) @ grads  # [Z]
        return loss + linear_surrogate(correction.to(tensors[0].dtype), tensors)
