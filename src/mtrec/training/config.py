"""Run configuration (pydantic, strict): what a run uses, saved resolved beside its checkpoint (``config.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from mtrec.data.source import check_spec
from mtrec.devices import DEVICE
from mtrec.errors import UserError
from mtrec.io import atomic_write_text, json_text, read_mapping
from mtrec.models import model_options
from mtrec.objectives.objective import check_objective_options
from mtrec.objectives.weighting import (
    weighting_options,
    weighting_reads_gradients,
    weighting_reads_representation,
)
from mtrec.training.precision import PrecisionSetting
from mtrec.typed import ConfigModel, Count, NonNegative, NonNegativeFloat, Rate, error_line, validate


class ConfigError(UserError, ValueError):
    """A configuration file or value that cannot be used."""



class TrainConfig(ConfigModel):
    """Optimisation and evaluation settings shared by every model (strict: see :mod:`mtrec.typed`).

    Built with keywords (``TrainConfig(epochs=5)``: an invalid value is pydantic's ValidationError) or
    from a mapping (:meth:`parse`: a ConfigError naming ``train.<key>``)."""

    epochs: Count = 10
    batch_size: Count = 1024
    lr: Rate = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    patience: NonNegative = 2  # epochs without improvement before stopping (0: stop at the first)
    # train on this fraction of the train split: a fixed subset (the same for every seed and run, drawn by
    # numpy.random.default_rng(0)), for cheaper search trials (docs/tune.md); validation and test stay whole
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    eval_batch_size: Count = 8192
    weighting: str = "fixed"
    weighting_options: dict[str, Any] = Field(default_factory=dict)
    # the objective (mtrec.objectives): "" for the model's default; a run's saved config names the one used
    objective: str = ""
    objective_options: dict[str, Any] = Field(default_factory=dict)
    # model selection on validation: "mean" (one epoch, best mean task score) or "per_task" (each task
    # read from the weights of its own best epoch)
    select: Literal["mean", "per_task"] = "mean"
    prefetch: NonNegative = 2
    device: str = "auto"  # auto (CUDA when available), cpu, mps, cuda or cuda:N
    num_threads: NonNegative = 0  # 0: the machine's cores shared among the processes on it
    # resume checkpoint (resume.safetensors) every this many optimizer steps, and at each epoch end;
    # 0: at epoch ends only
    checkpoint_every: NonNegative = 1000
    # also every this many minutes of training (0: by steps and epoch ends only)
    checkpoint_minutes: NonNegativeFloat = 5.0
    # where output is not a terminal (a log file, a job scheduler), one progress line every this many
    # seconds within an epoch instead of a progress bar (0: none)
    progress_seconds: NonNegativeFloat = 30.0
    # a non-finite loss: "stop" the run with an error naming the step and task, or "skip" the batch
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # with "stop", the loss flags are read every this many steps (and before every checkpoint), so
    # the step needs no device-to-host sync; "skip" reads them every step
    nonfinite_check_every: Count = 50
    # the embedding tables under torchrun: "none" (replicated on every rank, DDP), or sharded over the
    # ranks with TorchRec: "table_wise", "column_wise", or "auto" (TorchRec's planner); see docs/distributed.md
    embedding_sharding: Literal["none", "table_wise", "column_wise", "auto"] = "none"
    # "auto": each rank's memory budget in MiB for its tables and their optimizer state (0: TorchRec's default)
    embedding_memory_mb: NonNegative = 0
    # the tables' optimizer: "adam" (the model's Adam), or "adagrad" / "sgd" (their own, as sharded tables need);
    # "auto" (the default): adagrad with sharded tables, else adam (the validated config names the one used)
    embedding_optimizer: Literal["auto", "adam", "adagrad", "sgd"] = "auto"
    # the learning rate of the tables' own optimizer (adagrad, sgd); unset: TABLE_LR's for adagrad, train.lr for sgd
    embedding_lr: Rate | None = None
    # compile the training step's forward (model, objective, weighting) with torch.compile (inductor): the
    # first steps pay the compilation (logged; excluded from the throughput), later ones run fused kernels.
    # Off by default: it pays only on long runs, and not for every model (docs/performance.md)
    compile: bool = False
    # the number format of the training step (mtrec.training.precision): "auto" (bf16 where the device runs
    # it fast: CUDA with bf16, a CPU with AMX or AVX512-BF16; else fp32), "fp32", "bf16", or "fp16" (CUDA
    # only, with a gradient scaler). Weights, optimizer state, losses and metrics stay float32
    precision: PrecisionSetting = "auto"
    # every log_every steps, the cosine between each two tasks' gradients on the shared parameters (measured
    # on a fixed probe batch of train rows) goes into history.jsonl (gradient_cosine) and gradient_conflict.png
    log_gradient_conflict: bool = False
    # live curves: "tensorboard" writes TensorBoard event files under the run directory's tensorboard/
    log_to: list[Literal["tensorboard"]] = Field(default_factory=list)
    # steps between gradient-conflict measurements and between TensorBoard's per-step scalars
    log_every: Count = 50

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """A device name (whether this machine has it is checked when a run starts: a saved run stays
        readable on another machine)."""
        if not DEVICE.match(value):
            raise ValueError(f"must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    @model_validator(mode="after")
    def _fp16(self) -> TrainConfig:
        """Settings that fp16's gradient scaler cannot serve."""
        if self.precision != "fp16":
            return self
        if self.embedding_sharding != "none":
            raise ValueError(f"precision: fp16 cannot be used with train.embedding_sharding: "
                             f"{self.embedding_sharding}: sharded tables apply their gradients inside the "
                             f"backward pass, before the gradient scaler could unscale them; use bf16")
        if weighting_reads_gradients(self.weighting):
            raise ValueError(f"precision: fp16 cannot be used with train.weighting: {self.weighting}: it reads "
                             f"task gradients of the unscaled loss, which fp16 flushes to zero; use bf16")
        return self

    @model_validator(mode="after")
    def _compile(self) -> TrainConfig:
        """Weightings a compiled step cannot serve."""
        if self.compile and weighting_reads_representation(self.weighting):
            raise ValueError(f"compile: true cannot be used with train.weighting: {self.weighting}: it records the "
                             f"shared representation during the forward pass, which a compiled graph does not expose")
        return self

    @model_validator(mode="after")
    def _sharding(self) -> TrainConfig:
        """``embedding_optimizer: auto`` made concrete, and settings that sharded tables cannot serve."""
        if self.embedding_optimizer == "auto":
            self.embedding_optimizer = "adam" if self.embedding_sharding == "none" else "adagrad"
        if self.embedding_sharding == "none":
            return self
        if self.compile:
            raise ValueError(f"compile: true cannot be used with train.embedding_sharding: {self.embedding_sharding}: "
                             f"TorchRec's sharded tables are not compiled")
        if self.log_gradient_conflict:
            raise ValueError(f"log_gradient_conflict: true cannot be used with train.embedding_sharding: "
                             f"{self.embedding_sharding}: the probe's backward would need every rank's tables")
        if self.embedding_optimizer == "adam":
            raise ValueError(f"embedding_sharding: {self.embedding_sharding} needs train.embedding_optimizer "
                             f"adagrad or sgd: sharded tables are updated by fbgemm's fused kernels, which have "
                             f"no Adam on CPU")
        if self.weighting == "gradnorm":
            raise ValueError(f"weighting: gradnorm cannot be used with train.embedding_sharding: "
                             f"{self.embedding_sharding}: it measures gradients on the embedding tables, which "
                             f"sharded tables apply inside the backward pass")
        if self.select == "per_task":
            raise ValueError(f"select: per_task cannot be used with train.embedding_sharding: "
                             f"{self.embedding_sharding}: it keeps a copy of the whole model per task")
        return self

    @classmethod
    def parse(cls, data: Any, where: str = "config") -> TrainConfig:
        return validate(cls, data, where, ConfigError, prefix="train")


def train_overrides(value: dict[str, Any]) -> dict[str, Any]:
    """Train settings given as overrides (a bench's ``train:``), checked as TrainConfig keys and values;
    the seed is not one of them (a bench's seeds go under ``seeds:``)."""
    if "seed" in value:
        raise ValueError("the seed is not a train setting here: seeds go under 'seeds:'")
    try:
        TrainConfig.model_validate(value)
    except ValidationError as exc:
        raise ValueError(error_line(exc, cls=TrainConfig)) from None
    return value


TrainOverrides = Annotated[dict[str, Any], AfterValidator(train_overrides)]


class RunConfig(ConfigModel):
    """A model, its options, the data spec and the training settings."""

    model: str
    data: str = "synthetic"
    model_options: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("model_options", "train", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        """An empty section (``train:`` with nothing under it) is the defaults."""
        return {} if value is None else value

    @field_validator("data")
    @classmethod
    def _data_spec(cls, value: str) -> str:
        check_spec(value)
        return value

    @model_validator(mode="after")
    def _options(self) -> RunConfig:
        """The model, weighting and objective options, checked against their constructors' signatures."""
        model_options(self.model, self.model_options)
        weighting_options(self.train.weighting, self.train.weighting_options)
        if self.train.objective:
            check_objective_options(self.train.objective, self.train.objective_options)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> RunConfig:
        """A run config from a mapping; ConfigError naming ``where`` and the key if it is not valid."""
        return validate(cls, data, where, ConfigError)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json_text(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(read_mapping(path, "run config", ConfigError), where=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from a file, with a clear error for anything else."""
    return read_mapping(path, "config file", ConfigError)

