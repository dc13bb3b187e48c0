"""``mtrec tune``: equal-budget hyper-parameter search (Optuna), one normal run directory per trial.

``tune(config_path, out)`` checks the tune config (:mod:`mtrec.tune.space`), runs or continues the study
(:mod:`mtrec.tune.study`) and writes the best run config, the trials table and the plots
(:mod:`mtrec.tune.report`). The output directory holds ``tune.json`` (the config the study was started
with: a study is only continued with the same model, data, fixed settings, space and seed), ``study.db``
(the default storage), ``best.yaml``, ``trials.csv``, ``history.png``, ``importances.png`` and
``trials/NNNN/``, one run directory per trial.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtrec.tune.results import TUNE_JSON
from mtrec.tune.space import TuneConfig, TuneError, load_tune_config

__all__ = ["TuneConfig", "TuneError", "load_tune_config", "tune"]

OURS = re.compile(r"^(tune\.json|study\.db(-journal|-wal|-shm)?|best\.yaml|trials\.csv|history\.png|"
                  r"importances\.png|trials/\d{4}/[^/]+)$")


def _check_same_study(out: Path, config: TuneConfig) -> None:
    """Refuse to continue a study in ``out`` that was started with another config (``trials`` may change)."""
    from mtrec.io import atomic_write_text, json_text

    current = config.file.model_dump(exclude={"trials"})
    path = out / TUNE_JSON
    if path.is_file():
        saved = json.loads(path.read_text())
        current_json = json.loads(json_text(current))
        changed = sorted(k for k in set(saved) | set(current_json) if saved.get(k) != current_json.get(k))
        if changed:
            raise TuneError(f"{out}: holds a study started with other settings ({', '.join(changed)} differ); "
                            f"choose a new output directory or the config it was started with")
        return
    atomic_write_text(path, json_text(current, indent=2) + "\n")


def tune(
    config_path: str,
    out: str | Path,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Any, list[Path]]:
    """Run or continue the study of the tune config at ``config_path`` in ``out``; the study and the
    report files written."""
    from mtrec.io import check_output_dir, check_own_dir
    from mtrec.locks import locked_directory
    from mtrec.tune.report import write_report
    from mtrec.tune.study import run_study

    config = load_tune_config(config_path)
    directory = check_output_dir(out, "tune output directory")
    check_own_dir(directory, OURS, "a tune output directory")
    with locked_directory(directory, "tune output directory"):
        _check_same_study(directory, config)
        study = run_study(config, directory, trials, timeout, storage, log)
        return study, write_report(study, config, directory)
