"""A tune config and its search space: typed, and checked against the model's signature and the train settings.

A tune config (YAML) names one model, the data, the fixed settings and the search space::

    model: mmoe
    data: synthetic:easy:20000        # a data spec or a prepared dataset directory
    trials: 16                        # how many trials the study runs (finished or pruned); --trials overrides
    seed: 0                           # the sampler's seed (every trial trains with train.seed)
    train: {epochs: 10, patience: 2}  # fixed train settings
    model_options: {}                 # fixed model options
    space:                            # the searched parameters: a train setting or one of the model's options
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      weight_decay: {low: 1.0e-8, high: 1.0e-3, log: true}
      dropout: {low: 0.0, high: 0.3}
      embedding_dim: {choices: [8, 16, 32]}
      num_experts: {low: 2, high: 8}  # integers when both bounds are integers

A parameter of the space is a range (``low``, ``high``, optionally ``log`` or ``step``) or a list of
``choices``. Each name must be a train setting or an option of the model, never both fixed and searched;
both ends of a range and every choice are checked as a run config checks its values, so a trial can
never sample a value that the model or the trainer would refuse.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.typed import ConfigModel, Count, NonNegative, validate


class TuneError(ConfigError):
    """A tune config, search space or storage that cannot be used."""


Number = int | float
Scalar = int | float | str | bool
Choice = Scalar | list[Scalar]  # a list: e.g. layer widths, offered to the sampler as its JSON text


class Parameter(ConfigModel):
    """One searched parameter: a range (``low``/``high``, ``log`` or ``step``) or ``choices``."""

    low: Number | None = None
    high: Number | None = None
    log: bool = False
    step: Number | None = None
    choices: Annotated[list[Choice], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either 'choices' or a range ('low', 'high'), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both 'low' and 'high' (or give 'choices')")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        """An integer range: both ends (and the step, if any) are integers."""
        ends = (self.low, self.high, *(() if self.step is None else (self.step,)))
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in ends)

    def sampler_choices(self) -> list[Scalar]:
        """The choices as the sampler takes them (a list choice as its JSON text, e.g. ``"[128, 64]"``)."""
        return [json.dumps(c) if isinstance(c, list) else c for c in self.choices or []]

    def value(self, sampled: Any) -> Any:
        """The parameter's value from what the sampler returned (a list choice back from its JSON text)."""
        if self.choices is not None and sampled not in self.choices:
            return json.loads(sampled)
        return sampled

    def examples(self) -> list[Any]:
        """The values that bound what this parameter can sample: both ends of a range, or every choice."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]


class TuneFile(ConfigModel):
    """A tune config as written (see the module docstring)."""

    model: str
    data: str = "synthetic"
    trials: Count = 16
    seed: NonNegative = 0
    train: dict[str, Any] = Field(default_factory=dict)
    model_options: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Parameter]

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        if not value:
            raise ValueError("name at least one parameter to search (the space is empty)")
        return value


TRAIN_KEYS = frozenset(TrainConfig.model_fields)


def split_params(model: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Searched values split into (model options, train settings) by name."""
    from mtrec.models import model_options

    accepted = set(model_options(model))
    return ({k: v for k, v in values.items() if k in accepted},
            {k: v for k, v in values.items() if k not in accepted})


class TuneConfig:
    """A checked tune config: the fixed run config and the search space over it."""

    def __init__(self, file: TuneFile, where: str) -> None:
        self.file = file
        self.where = where
        base = self.run_config({})
        self.model = base.model
        self.data = base.data

    @property
    def space(self) -> dict[str, Parameter]:
        return self.file.space

    @property
    def trials(self) -> int:
        return self.file.trials

    @property
    def seed(self) -> int:
        return self.file.seed

    def run_config(self, values: dict[str, Any]) -> RunConfig:
        """The run config of a trial: the fixed settings with ``values`` (searched names, as the sampler
        returned them) put in."""
        values = {k: self.space[k].value(v) if k in self.space else v for k, v in values.items()}
        options, train = split_params(self.file.model, values)
        return RunConfig.from_dict({
            "model": self.file.model, "data": self.file.data,
            "model_options": {**self.file.model_options, **options},
            "train": {**self.file.train, **train},
        }, where=self.where)

    def check_space(self) -> None:
        """Refuse names that are neither a model option nor a train setting, names both fixed and searched,
        and values (a range's ends, each choice) that the run config would refuse."""
        from mtrec.models import model_options

        accepted = set(model_options(self.file.model))
        for name, parameter in self.space.items():
            key = f"{self.where}: space.{name}"
            if name not in accepted and name not in TRAIN_KEYS:
                raise TuneError(f"{key}: unknown parameter: neither a train setting nor an option of model "
                                f"{self.file.model!r} (its options: {', '.join(sorted(accepted))})")
            if name == "seed":
                raise TuneError(f"{key}: the seed is not searched (seeds are for repeating the best configuration)")
            fixed = "model_options" if name in accepted else "train"
            if name in getattr(self.file, fixed):
                raise TuneError(f"{key}: contradictory: {name!r} is both fixed under '{fixed}' and searched")
            for value in parameter.examples():
                try:
                    self.run_config({name: value})
                except ConfigError as exc:
                    raise TuneError(f"{key}: the value {value!r} is refused: {exc}") from None


def load_tune_config(path: str) -> TuneConfig:
    """A tune config from a YAML file, with its search space checked; TuneError naming file and key."""
    from mtrec.io import read_mapping

    raw = read_mapping(path, "tune config", TuneError)
    file = validate(TuneFile, raw, path, TuneError)
    try:
        config = TuneConfig(file, path)
    except ConfigError as exc:
        raise TuneError(str(exc)) from None
    config.check_space()
    return config
