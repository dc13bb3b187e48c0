"""What a study leaves beside its storage: the best run config, a trials table and two plots.

- ``best.yaml``: the best trial's run config, which ``mtrec train --config`` accepts as it is;
- ``trials.csv``: one row per trial (number, state, value, each parameter, seconds, run directory, why pruned);
- ``history.png``: Optuna's optimization history; ``importances.png``: Optuna's parameter importances
  (drawn once at least two trials completed and more than one parameter is searched).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

from mtrec.tune.results import BEST, TRIALS_CSV
from mtrec.tune.space import TuneConfig

HISTORY_PNG = "history.png"
IMPORTANCES_PNG = "importances.png"


def trials_table(study: Any, config: TuneConfig) -> str:
    """The study's trials as CSV text, in trial order."""
    names = list(config.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", *names, "seconds", "run_dir", "pruned_because"])
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                         *(t.params.get(n, "") for n in names), f"{seconds:.1f}" if seconds != "" else "",
                         t.user_attrs.get("run_dir", ""), t.user_attrs.get("pruned_because", "")])
    return buffer.getvalue()


def best_run_config(study: Any, config: TuneConfig) -> dict[str, Any] | None:
    """The best completed trial's run config as a plain mapping (None before any trial completed)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return config.run_config(study.best_trial.params).to_dict()


def _save_plot(axes: Any, path: Path) -> None:
    from mtrec.io import atomic_write

    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    import matplotlib.pyplot as plt

    plt.close(figure)


def write_report(study: Any, config: TuneConfig, out: Path) -> list[Path]:
    """Write best.yaml, trials.csv and the plots into ``out``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    import yaml
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    from mtrec.io import atomic_write_text, json_text

    written = [out / TRIALS_CSV]
    atomic_write_text(out / TRIALS_CSV, trials_table(study, config))
    best = best_run_config(study, config)
    if best is not None:
        header = (f"# the best of {len(study.trials)} trials of model {config.model} on {config.data} "
                  f"(trial {study.best_trial.number}, validation score {study.best_value:.4f})\n")
        atomic_write_text(out / BEST, header + yaml.safe_dump(json.loads(json_text(best)), sort_keys=False))
        written.append(out / BEST)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal" with few trials
        if completed:
            axes = optuna_plots.plot_optimization_history(study)
            axes.set_title(f"{config.model}: validation score by trial")
            _save_plot(axes, out / HISTORY_PNG)
            written.append(out / HISTORY_PNG)
        if len(completed) >= 2 and len(config.space) > 1:
            axes = optuna_plots.plot_param_importances(study)
            axes.set_title(f"{config.model}: parameter importances (fANOVA)")
            _save_plot(axes, out / IMPORTANCES_PNG)
            written.append(out / IMPORTANCES_PNG)
    return written
