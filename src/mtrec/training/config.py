"""Resolved run configuration: what a run used, saved beside its checkpoint (``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mtrec.io import atomic_write_text, json_text, read_mapping


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


NONFINITE_POLICIES = ("stop", "skip")
SELECTIONS = ("mean", "per_task")


@dataclass
class TrainConfig:
    """Optimisation and evaluation settings shared by every model."""

    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    eval_batch_size: int = 8192
    weighting: str = "fixed"
    weighting_options: dict[str, Any] = field(default_factory=dict)
    # the objective (mtrec.objectives): "" for the model's default; a run's saved config names the one used
    objective: str = ""
    objective_options: dict[str, Any] = field(default_factory=dict)
    # model selection on validation: "mean" (one epoch, best mean task score) or "per_task" (each task
    # read from the weights of its own best epoch)
    select: str = "mean"
    prefetch: int = 2
    device: str = "auto"
    num_threads: int = 0  # 0: the machine's cores shared among the processes on it
    # resume checkpoint (resume.safetensors) every this many optimizer steps, and at each epoch end;
    # 0: at epoch ends only
    checkpoint_every: int = 1000
    # a non-finite loss: "stop" the run with an error naming the step and task, or "skip" the batch
    on_nonfinite: str = "stop"
    # with "stop", the loss flags are read every this many steps (and before every checkpoint), so
    # the step needs no device-to-host sync; "skip" reads them every step
    nonfinite_check_every: int = 50

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "nonfinite_check_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ConfigError(f"train.patience must be >= 0, got {self.patience}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"train.checkpoint_every must be >= 0 (0: epoch ends only), got {self.checkpoint_every}")
        if self.select not in SELECTIONS:
            raise ConfigError(f"train.select must be one of {list(SELECTIONS)}, got {self.select!r}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(
                f"train.on_nonfinite must be one of {list(NONFINITE_POLICIES)}, got {self.on_nonfinite!r}"
            )


@dataclass
class RunConfig:
    """A model, its options, the data spec and the training settings."""

    model: str
    data: str = "synthetic"
    model_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(known)}")
        if "model" not in data:
            raise ConfigError(f"{where}: missing key 'model'")
        train = dict(data.get("train") or {})
        train_known = {f.name for f in fields(TrainConfig)}
        bad = sorted(set(train) - train_known)
        if bad:
            raise ConfigError(f"{where}: unknown train option(s) {bad}; expected {sorted(train_known)}")
        return cls(
            model=data["model"],
            data=data.get("data", "synthetic"),
            model_options=dict(data.get("model_options") or {}),
            train=TrainConfig(**train),
        )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json_text(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(read_mapping(path, "run config", ConfigError), where=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from a file, with a clear error for anything else."""
    return read_mapping(path, "config file", ConfigError)


def resolved_objective(train: TrainConfig, default: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The objective a run uses and its options: ``train.objective`` when set (with its options as
    given), else the model's ``default`` with the default's options updated by ``train.objective_options``."""
    if train.objective:
        return train.objective, dict(train.objective_options)
    name, options = default
    return name, {**options, **train.objective_options}
