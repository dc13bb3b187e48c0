"""Task-weighting strategies: how per-task losses combine into the one loss that is minimised.

A strategy is an ``nn.Module`` (its learnable parameters join the optimizer; its state is checkpointed)
chosen in config by name. The trainer calls :meth:`WeightingStrategy.combine` with the task losses, the
parameters the model declares shared (``shared_parameters()``) and, for a strategy that declares
``reads_representation``, the step's shared representation (the tensors the model's
``shared_representation()`` returned, see :func:`~mtrec.nn.embedding.capturing`); a strategy never sees
the model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mtrec.errors import UserError
from mtrec.objectives.gradients import mean_over_ranks, task_gradients
from mtrec.objectives.registry import Registry
from mtrec.typed import NonNegativeFloat, Rate, checked_options


class WeightingConfigError(UserError, ValueError):
    """An unknown weighting, an option it does not take, or a model it cannot serve."""


class WeightingStrategy(nn.Module):
    """Combines task losses ``{task: scalar}`` into one scalar."""

    reads_gradients: ClassVar[bool] = False  # whether combine() takes task gradients (autograd.grad)
    reads_representation: ClassVar[bool] = False  # whether combine() needs the step's shared representation

    def __init__(self, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The loss to minimise; ``representation`` is empty unless the strategy ``reads_representation``."""
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        """The weights in force, for logging (called once per epoch, not per step)."""
        raise NotImplementedError


def trainable_shared(strategy: str, shared: list[nn.Parameter]) -> list[nn.Parameter]:
    """The shared parameters that train; a strategy that needs them refuses a model that shares none."""
    trainable = [p for p in shared if p.requires_grad]
    if not trainable:
        raise WeightingConfigError(f"{strategy} needs a model with shared parameters; this model shares none "
                                   "(its shared_parameters() is empty): use the fixed or uncertainty weighting")
    return trainable


_STRATEGIES: Registry[WeightingStrategy] = Registry("weighting", WeightingConfigError)
register_weighting = _STRATEGIES.register
list_weightings = _STRATEGIES.names


def weighting_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the constructor of the weighting ``name`` (names, types, ranges)."""
    return checked_options(_STRATEGIES.get(name).__init__, options, f"train.weighting_options of weighting {name!r}",
                           WeightingConfigError, skip=("task_names",))


def weighting_reads_gradients(name: str) -> bool:
    """Whether the weighting ``name`` takes task gradients inside ``combine`` (False for an unknown name,
    which is reported where the weighting is built)."""
    return name in list_weightings() and _STRATEGIES.get(name).reads_gradients


def weighting_reads_representation(name: str) -> bool:
    """Whether the weighting ``name`` balances on the shared representation (False for an unknown name)."""
    return name in list_weightings() and _STRATEGIES.get(name).reads_representation


def create_weighting(name: str, task_names: list[str], **options: Any) -> WeightingStrategy:
    return _STRATEGIES.get(name)(task_names, **weighting_options(name, options))


@register_weighting("fixed")
class FixedWeighting(WeightingStrategy):
    """``sum_k w_k L_k`` with constant weights (default 1 for every task)."""

    weights: torch.Tensor

    def __init__(self, task_names: list[str], weights: dict[str, NonNegativeFloat] | None = None) -> None:
        super().__init__(task_names)
        weights = weights or {}
        unknown = sorted(set(weights) - set(task_names))
        if unknown:
            raise WeightingConfigError(f"train.weighting_options.weights: names unknown task(s) {unknown}; "
                                       f"tasks: {task_names}")
        values = {t: weights.get(t, 1.0) for t in task_names}
        if not any(values.values()):
            raise WeightingConfigError(f"train.weighting_options.weights: every task weight is 0, so nothing would "
                                       f"be learned: {values}")
        self.register_buffer("weights", torch.tensor([float(w) for w in values.values()]))

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return torch.stack([task_losses[t] for t in self.task_names]) @ self.weights

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist(), strict=True))


@register_weighting("uncertainty")
class UncertaintyWeighting(WeightingStrategy):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics").

    Each task has a learned log-variance ``s_k = log sigma_k^2`` (a parameter, trained with the model);
    the loss is ``sum_k exp(-s_k) L_k + s_k``, the form used for classification (BCE) losses: a task
    whose loss stays high gets a larger variance and a smaller weight ``exp(-s_k)``, and the ``+ s_k``
    term keeps the variances from growing without bound (for a fixed ``L_k`` the optimum is
    ``s_k = log L_k``).
    """

    def __init__(self, task_names: list[str], init_log_variance: float = 0.0) -> None:
        super().__init__(task_names)
        self.log_variances = nn.Parameter(torch.full((len(task_names),), float(init_log_variance)))

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        losses = torch.stack([task_losses[t] for t in self.task_names])  # [T]
        return (torch.exp(-self.log_variances) * losses + self.log_variances).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, torch.exp(-self.log_variances.detach()).tolist(), strict=True))


@register_weighting("gradnorm")
class GradNormWeighting(WeightingStrategy):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks").

    The loss is ``sum_k w_k L_k``. At each step, on the model's last shared layer ``W`` (the ``shared``
    parameters the trainer passes: ``model.shared_parameters()``), with ``n_k = ||grad_W L_k||`` and
    ``G_k = w_k n_k``:

    - inverse training rate ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))`` (``L_k(0)``: the first step's
      losses);
    - target ``G_k* = mean_j G_j * r_k ** alpha``, held constant (as in the paper);
    - ``L_grad = sum_k |G_k - G_k*|``, whose gradient with respect to ``w_k`` is
      ``n_k * sign(G_k - G_k*)``; the weights take a step of ``lr`` times that gradient divided by
      ``mean_j n_j`` (so ``lr`` is in weight units per step, whatever the scale of the losses), are kept
      positive (at least ``min_weight``) and are renormalised to sum to the number of tasks.

    The step on ``w`` happens inside :meth:`combine` (the returned loss uses the weights of this step, so
    the model update is that of the paper's algorithm); ``w`` is a buffer, not an optimizer parameter. In
    distributed training the gradients and losses are first averaged over the ranks (one all-reduce), so
    every rank takes the same step.
    A task that learns slowly (high ``r_k``) gets a larger gradient-norm target and so a larger weight;
    ``alpha`` sets how strongly. Needs a model that shares parameters (``single_task`` does not).
    """

    reads_gradients = True
    weights: torch.Tensor
    initial_losses: torch.Tensor

    def __init__(
        self, task_names: list[str], alpha: NonNegativeFloat = 1.5, lr: Rate = 0.01, min_weight: Rate = 1e-3
    ) -> None:
        super().__init__(task_names)
        self.alpha = alpha
        self.lr = lr
        self.min_weight = min_weight
        self.register_buffer("weights", torch.ones(len(task_names)))
        self.register_buffer("initial_losses", torch.ones(len(task_names)))
        self.has_initial_losses = False

    def combine(self, task_losses: dict[str, torch.Tensor], shared: list[nn.Parameter],
                representation: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        losses = torch.stack([task_losses[t] for t in self.task_names])  # [T]
        loss = (self.weights.clone() * losses).sum()
        if torch.is_grad_enabled() and losses.requires_grad:
            self._update(task_losses, losses.detach(), shared)
        return loss

    def get_extra_state(self) -> dict[str, bool]:
        """Non-tensor state for ``state_dict`` (a resumed run must not take new initial losses)."""
        return {"has_initial_losses": self.has_initial_losses}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.has_initial_losses = bool(state["has_initial_losses"])

    @torch.no_grad()
    def _update(
        self, task_losses: dict[str, torch.Tensor], losses: torch.Tensor, shared_parameters: list[nn.Parameter]
    ) -> None:
        """One GradNorm step on the weights (see the class docstring)."""
        shared = trainable_shared("gradnorm", shared_parameters)
        grads = task_gradients([task_losses[t] for t in self.task_names], shared)  # [T, P]
        stats = mean_over_ranks(torch.cat([grads.flatten(), losses]))  # the whole step's gradients and losses
        grads, losses = stats[: grads.numel()].view_as(grads), stats[grads.numel() :]
        if not self.has_initial_losses:
            self.initial_losses.copy_(losses.clamp_min(1e-12))
            self.has_initial_losses = True
        norms = grads.norm(dim=1)  # n_k
        weighted = self.weights * norms  # G_k
        rates = losses / self.initial_losses
        target = weighted.mean() * (rates / rates.mean()) ** self.alpha  # G_k*, a constant
        step = norms * torch.sign(weighted - target) / norms.mean().clamp_min(1e-12)
        self.weights.sub_(self.lr * step).clamp_(min=self.min_weight)
        self.weights.mul_(len(self.task_names) / self.weights.sum())

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist(), strict=True))
