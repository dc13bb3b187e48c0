"""Task-weighting strategies: how per-task losses combine into the one loss that is minimised.

A strategy is an ``nn.Module`` (its learnable parameters join the optimizer; its state is checkpointed)
chosen in config by name. The trainer calls :meth:`WeightingStrategy.combine` and never looks at the
model's class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mtrec.models.base import MultiTaskModel


class WeightingStrategy(nn.Module):
    """Combines task losses ``{task: scalar}`` into one scalar."""

    def __init__(self, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)

    def combine(self, task_losses: dict[str, torch.Tensor], model: MultiTaskModel) -> torch.Tensor:
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        """The weights in force, for logging (called once per epoch, not per step)."""
        raise NotImplementedError


_STRATEGIES: dict[str, Callable[..., WeightingStrategy]] = {}


def register_weighting(name: str) -> Callable[[type[WeightingStrategy]], type[WeightingStrategy]]:
    def add(cls: type[WeightingStrategy]) -> type[WeightingStrategy]:
        _STRATEGIES[name] = cls
        return cls

    return add


def list_weightings() -> list[str]:
    return sorted(_STRATEGIES)


def create_weighting(name: str, task_names: list[str], **options: Any) -> WeightingStrategy:
    if name not in _STRATEGIES:
        raise ValueError(f"unknown weighting {name!r}; available: {', '.join(list_weightings())}")
    try:
        return _STRATEGIES[name](task_names, **options)
    except TypeError as exc:
        raise ValueError(f"weighting {name!r}: bad options {options}: {exc}") from exc


@register_weighting("fixed")
class FixedWeighting(WeightingStrategy):
    """``sum_k w_k L_k`` with constant weights (default 1 for every task)."""

    weights: torch.Tensor

    def __init__(self, task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names)
        weights = weights or {}
        unknown = sorted(set(weights) - set(task_names))
        if unknown:
            raise ValueError(f"fixed weighting names unknown task(s) {unknown}; tasks: {task_names}")
        self.register_buffer("weights", torch.tensor([float(weights.get(t, 1.0)) for t in task_names]))

    def combine(self, task_losses: dict[str, torch.Tensor], model: MultiTaskModel) -> torch.Tensor:
        return torch.stack([task_losses[t] for t in self.task_names]) @ self.weights

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist(), strict=True))
