"""Reading a finished study back (for ``mtrec bench`` with ``tuned:``) without loading Optuna."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrec.training.config import ConfigError, RunConfig

TUNE_JSON = "tune.json"
BEST = "best.yaml"
TRIALS_CSV = "trials.csv"
FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class BestConfig:
    """A study's best run config and the names its space searched."""

    run: RunConfig
    space: tuple[str, ...]

    @property
    def model(self) -> str:
        return self.run.model

    @property
    def searched(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The searched values of the best trial: (model options, train settings)."""
        train = self.run.train.model_dump()
        options = {k: self.run.model_options[k] for k in self.space if k in self.run.model_options}
        return options, {k: train[k] for k in self.space if k not in options}


def read_study(directory: Path, where: str) -> tuple[BestConfig, int]:
    """The best config of the study in ``directory`` and its finished trials; ConfigError naming ``where``
    and the file when the study is missing, unfinished or not a study of ``mtrec tune``."""
    files = {name: directory / name for name in (TUNE_JSON, BEST, TRIALS_CSV)}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise ConfigError(f"{where}: {directory} is not a finished study of `mtrec tune` (no {', '.join(missing)})")
    try:
        space = tuple(json.loads(files[TUNE_JSON].read_text())["space"])
        run = RunConfig.load(files[BEST])
        with open(files[TRIALS_CSV], newline="") as f:
            trials = sum(1 for row in csv.DictReader(f) if row.get("state") in FINISHED)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: {directory}: cannot read the study ({' '.join(str(exc).split())})") from None
    return BestConfig(run, space), trials
