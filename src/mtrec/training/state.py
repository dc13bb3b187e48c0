"""A run's progress: what a resume checkpoint restores besides modules and RNG states."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mtrec.training.callbacks import EarlyStopping
from mtrec.training.resume import ResumeError


@dataclass
class TrainState:
    """Where a run stands: epoch and step, early stopping, losses so far, warnings, history."""

    stopper: EarlyStopping
    epoch: int = 0  # the epoch in progress (= epochs completed)
    step: int = 0  # steps completed within it
    global_step: int = 0
    samples: int = 0
    skipped_batches: int = 0
    epoch_loss: dict[str, float] = field(default_factory=dict)  # sum over the epoch's trained steps
    first_loss: dict[str, float] = field(default_factory=dict)  # each task's loss at the first step
    diverged: list[str] = field(default_factory=list)  # tasks whose training diverged (warned once each)
    warnings: list[str] = field(default_factory=list)
    epoch_trained_steps: int = 0
    best_valid: dict[str, dict[str, float]] = field(default_factory=dict)  # per task, at its selected epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TrainState:
        """The state saved by :meth:`to_dict`; ResumeError naming ``where`` and the keys if it is not one."""
        _check_keys(data, {f.name for f in fields(cls)}, {"stopper"}, f"{where}: progress")
        _check_keys(data["stopper"], {f.name for f in fields(EarlyStopping)}, {"patience"},
                    f"{where}: progress.stopper")
        try:
            return cls(**{**data, "stopper": EarlyStopping(**data["stopper"])})
        except TypeError as exc:
            raise ResumeError(f"{where}: progress is not a run's progress ({exc})") from None


def _check_keys(data: Any, known: set[str], required: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ResumeError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown, missing = sorted(set(data) - known), sorted(required - set(data))
    if unknown or missing:
        found = [f"unknown key(s) {unknown}"] * bool(unknown) + [f"missing key(s) {missing}"] * bool(missing)
        raise ResumeError(f"{where}: {' and '.join(found)}; not a checkpoint this version of mtrec wrote")
