"""Per-task gradients over a set of parameters (or of tensors, such as a shared representation), averaged
over the ranks: what gradient-level weighting strategies (GradNorm, PCGrad, CAGrad, MetaBalance,
MultiBalance) read."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtrec import collectives


def flat_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``d loss / d params`` flattened into one vector ``[P]`` (zeros where the loss does not reach); the
    graph is kept for the step's own backward pass."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params, strict=True)])


def task_gradients(losses: list[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each loss's flat gradient over ``params``: ``[T, P]``."""
    return torch.stack([flat_gradient(loss, params) for loss in losses])


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (one all-reduce; ``tensor`` itself on one process).

    A rank's task loss is its share of the step's mean scaled by the world size
    (:func:`~mtrec.objectives.losses.step_mean`), so the mean over ranks of its gradient is the gradient
    of the whole step's loss: every rank then holds the same, exact, step gradients."""
    world_size = collectives.world_size()
    if world_size == 1:
        return tensor
    return collectives.all_reduce_(tensor.clone()) / world_size
