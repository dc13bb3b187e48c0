"""Equal-budget hyper-parameter search with Optuna: a seeded TPE sampler, epoch-level pruning, resumable studies.

``run_study`` trains one trial after another until the study holds ``trials`` finished trials (completed or
pruned), so a second invocation with a larger ``trials`` continues the study where it stopped. Each trial is
a normal run directory, ``OUT/trials/NNNN``, that can be inspected, exported or served. A trial's value is
its validation selection score (the mean over the selection keys of ``train.select`` of each key's best
epoch score: mean task AUC for binary tasks, see :mod:`mtrec.training`); Optuna maximises it.

Storage: by default an SQLite file, ``OUT/study.db``. With a server URL (``postgresql://...``) several
machines work on one study at once, which is Optuna's own way to distribute: each runs ``mtrec tune`` with
the same config and ``--storage``, and every process stops once the study has ``trials`` finished trials.
A trial left running by a killed process is marked failed when the study is continued (default storage,
whose directory this process holds locked); on a shared server Optuna's heartbeat does it.

A trial whose loss or weights become non-finite is pruned and recorded (``pruned_because``), never a crash.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtrec.training.callbacks import TrainerCallback
from mtrec.tune.space import Parameter, TuneConfig, TuneError

if TYPE_CHECKING:
    from mtrec.training.state import TrainState
    from mtrec.training.trainer import Trainer

STUDY_DB = "study.db"
TRIALS_DIR = "trials"
CREATE_TRIES = 3  # attempts at creating a new database's tables (processes starting together race)
HEARTBEAT_S = 60  # a shared-storage trial whose process sent no heartbeat for 2x this is marked failed


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS_DIR / f"{number:04d}"


def epoch_score(row: dict[str, Any]) -> float:
    """An epoch's validation selection score (mean over the selection keys; undefined keys skipped)."""
    values = [v for v in row["valid_score"].values() if math.isfinite(v)]
    return sum(values) / len(values) if values else -math.inf


def run_score(history: list[dict[str, Any]]) -> float:
    """A finished run's value: per selection key its best epoch's score, averaged over the keys."""
    keys = history[0]["valid_score"].keys() if history else []
    best = [max(row["valid_score"][k] for row in history) for k in keys]
    finite = [v for v in best if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else -math.inf


def suggest(trial: Any, name: str, parameter: Parameter) -> Any:
    """The trial's value of one parameter (Optuna's suggest API)."""
    if parameter.choices is not None:
        return trial.suggest_categorical(name, parameter.sampler_choices())
    if parameter.is_int:
        return trial.suggest_int(name, int(parameter.low or 0), int(parameter.high or 0),
                                 step=int(parameter.step or 1), log=parameter.log)
    return trial.suggest_float(name, float(parameter.low or 0.0), float(parameter.high or 0.0),
                               step=None if parameter.step is None else float(parameter.step), log=parameter.log)


class PruningCallback(TrainerCallback):
    """Reports each epoch's validation score to the trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_epoch_end(self, trainer: Trainer | None, state: TrainState | None, row: dict[str, Any]) -> None:
        import optuna

        score = epoch_score(row)
        self.trial.report(score if math.isfinite(score) else -1.0, row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (validation score {score:.4f})")


def open_storage(url: str | None, out: Path) -> Any:
    """The study's storage: SQLite in ``out`` by default, else the given database URL (TuneError if it
    cannot be reached). Processes starting together on a new database race to create its tables; the loser
    of that race tries again."""
    import optuna
    import sqlalchemy.exc

    shared = url is not None
    url = url or f"sqlite:///{(out / STUDY_DB).resolve()}"
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S if shared else None,
                                                  grace_period=2 * HEARTBEAT_S if shared else None)
        except sqlalchemy.exc.IntegrityError:
            attempt += 1
            if attempt < CREATE_TRIES:
                time.sleep(attempt)
                continue
            raise TuneError(f"--storage {url}: cannot create the study's tables (other processes keep "
                            f"creating them); start the processes again") from None
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TuneError(f"--storage {url}: cannot be used ({reason})") from None


def fail_orphans(study: Any) -> int:
    """Mark the trials a killed process left running as failed (only for a storage this process holds alone)."""
    from optuna.trial import TrialState

    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in orphans:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(orphans)


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(
    config: TuneConfig,
    out: Path,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Run (or continue) the study of ``config`` until it holds ``trials`` finished trials (the config's
    ``trials`` when None) or ``timeout`` seconds pass; returns the Optuna study."""
    import optuna

    from mtrec.data.source import load_data
    from mtrec.training.nonfinite import NonFiniteLossError, NonFiniteParametersError
    from mtrec.training.run import train_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = trials or config.trials
    study = optuna.create_study(
        study_name=config.model, storage=open_storage(storage, out), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
    )
    if storage is None and (orphaned := fail_orphans(study)):
        log(f"marked {orphaned} trial(s) left running by a stopped process as failed")
    done = finished(study)
    if done >= target:
        log(f"the study already has {done} finished trials (asked for {target})")
        return study
    log(f"tuning {config.model} on {config.data}: {done} of {target} trials finished, {target - done} to run")
    dataset = load_data(config.data)

    def objective(trial: Any) -> float:
        values = {name: suggest(trial, name, p) for name, p in config.space.items()}
        run = trial_dir(out, trial.number)
        trial.set_user_attr("run_dir", str(run.relative_to(out)))
        pruner = PruningCallback(trial)
        try:
            train_run(config.run_config(values), run, dataset=dataset, log=lambda _: None, callbacks=[pruner])
        except (NonFiniteLossError, NonFiniteParametersError) as exc:
            trial.set_user_attr("pruned_because", str(exc).split(";")[0])
            raise optuna.TrialPruned(str(exc)) from None
        history = pruner_history(run)
        value = run_score(history)
        log(f"trial {trial.number}: {value:.4f}  {values}")
        return value

    stop = optuna.study.MaxTrialsCallback(target, states=(optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, timeout=timeout, callbacks=[stop], catch=())
    return study


def pruner_history(run: Path) -> list[dict[str, Any]]:
    """The epochs a finished trial's run directory recorded (``history.jsonl``)."""
    import json

    from mtrec.training.rundir import HISTORY

    path = run / HISTORY
    if not path.is_file():
        raise TuneError(f"{run}: the trial finished without {HISTORY}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
