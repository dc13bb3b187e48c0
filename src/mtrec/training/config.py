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
EMBEDDING_SHARDINGS = ("none", "table_wise", "column_wise", "auto")
EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "sgd")


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
    # the embedding tables under torchrun: "none" (replicated on every rank, DDP), or sharded over the
    # ranks with TorchRec: "table_wise", "column_wise", or "auto" (TorchRec's planner); see docs/distributed.md
    embedding_sharding: str = "none"
    # "auto": each rank's memory budget in MiB for its tables and their optimizer state (0: TorchRec's default)
    embedding_memory_mb: int = 0
    # the tables' optimizer: "adam" (the model's Adam), or "adagrad" / "sgd" (their own, as sharded tables need)
    embedding_optimizer: str = "adam"

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
        self._check_sharding()

    def _check_sharding(self) -> None:
        choices = {"embedding_sharding": EMBEDDING_SHARDINGS, "embedding_optimizer": EMBEDDING_OPTIMIZERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.embedding_memory_mb < 0:
            raise ConfigError(f"train.embedding_memory_mb must be >= 0 (0: TorchRec's default), "
                              f"got {self.embedding_memory_mb}")
        if self.embedding_sharding == "none":
            return
        if self.embedding_optimizer == "adam":
            raise ConfigError(f"train.embedding_sharding: {self.embedding_sharding} needs train.embedding_optimizer "
                              f"adagrad or sgd: sharded tables are updated by fbgemm's fused kernels, which have "
                              f"no Adam on CPU")
        if self.weighting == "gradnorm":
            raise ConfigError(f"train.weighting: gradnorm cannot be used with train.embedding_sharding: "
                              f"{self.embedding_sharding}: it measures gradients on the embedding tables, which "
                              f"sharded tables apply inside the backward pass")
        if self.select == "per_task":
            raise ConfigError(f"train.select: per_task cannot be used with train.embedding_sharding: "
                              f"{self.embedding_sharding}: it keeps a copy of the whole model per task")


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
