"""Watching for NaN and infinite losses without a host sync per step.

:class:`LossWatch` keeps, on the device, the first step at which each named loss term was not finite;
recording a step is a few device operations and no ``.item()``. The record is read (one sync, combined
over ranks) when the trainer asks: every few steps, and always before anything is written, so a run
never saves a checkpoint from weights that a non-finite loss has touched.
"""

from __future__ import annotations

import torch

from mtrec import collectives
from mtrec.errors import UserError

NEVER = torch.iinfo(torch.int64).max
TOTAL = "(weighted total)"


class NonFiniteLossError(UserError, RuntimeError):
    """A loss term became NaN or infinite and the run is configured to stop."""


class NonFiniteParametersError(UserError, RuntimeError):
    """Model parameters became NaN or infinite (caught before they are written)."""


class LossWatch:
    """First non-finite step per loss term (task losses, auxiliary terms, the weighted total)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.first_bad: torch.Tensor | None = None  # int64 [K] global step, NEVER if always finite

    def observe(self, step: int, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Record one step's scalar loss terms; returns their finiteness, bool ``[K]`` (no sync)."""
        if self.first_bad is None:
            self.names = list(terms)
            self.first_bad = torch.full((len(self.names),), NEVER, dtype=torch.int64, device=self.device)
        finite = torch.isfinite(torch.stack([terms[n].detach().float() for n in self.names]))  # [K]
        self.first_bad = torch.minimum(self.first_bad, self.first_bad.masked_fill(~finite, step))
        return finite

    def first_failure(self) -> tuple[int, list[str]] | None:
        """``(step, names)`` of the earliest non-finite step over all ranks, or None. A collective."""
        if self.first_bad is None:
            return None
        first = collectives.all_reduce_(self.first_bad.clone(), "min").tolist()
        step = min(first)
        if step == NEVER:
            return None
        return step, [name for name, s in zip(self.names, first, strict=True) if s == step]


def all_finite_everywhere(finite: torch.Tensor) -> bool:
    """True if every entry of ``finite`` is True on every rank (one sync; a collective)."""
    flag = finite.all().to(torch.int32).reshape(1)
    return bool(collectives.all_reduce_(flag, "min").item())


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers holding NaN or inf (empty if all finite)."""
    named = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, flags, strict=True) if not ok]
