"""The one writer of a run directory: every file a run leaves is written here, atomically.

A run directory holds ``config.json`` (resolved), ``schema.json``, ``model.safetensors`` (the selected
weights), ``history.jsonl`` (one line per epoch), ``resume.safetensors`` (what ``--resume`` continues
from; a run with sharded embedding tables adds each rank's ``resume-shard{r}of{W}-step{S}.safetensors``),
``metrics.json``, ``learning_curves.png`` and ``roc.png`` (with ``train.log_gradient_conflict`` also
``gradient_conflict.png``; with ``train.log_to: [tensorboard]`` TensorBoard's event files under
``tensorboard/``, written by its SummaryWriter); for data prepared from raw files (or synthetic data,
which carries its raw-value encoders) also ``encoders.json``. Only rank 0 holds a
:class:`RunDirectory` as its writer; other ranks write nothing, except each rank's own checkpoint file
of a sharded run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mtrec.data.dataset import PreparedDataset
from mtrec.features.encoders import ENCODERS_FILE
from mtrec.features.schema import DatasetSchema
from mtrec.io import (
    PathError,
    atomic_write_text,
    check_output_dir,
    check_own_dir,
    json_text,
    remove_stale_temporaries,
)
from mtrec.models import ModelConfigError
from mtrec.training.checkpoint import CONFIG, SCHEMA, WEIGHTS, save_weights
from mtrec.training.checkpointer import run_settings
from mtrec.training.config import ConfigError, RunConfig
from mtrec.training.resume import RESUME, load_resume, save_resume

HISTORY = "history.jsonl"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"
TIMING = "timing.json"  # the benchmark's wall time of the run
# what a run directory holds (timing.json: the benchmark's); a run never writes over anything else
RUN_FILES = re.compile(r"^(config\.json|schema\.json|model\.safetensors|resume\.safetensors|history\.jsonl|"
                       r"metrics\.json|encoders\.json|timing\.json|learning_curves\.png|roc\.png|"
                       r"resume-shard\d+of\d+-step\d+\.safetensors|"
                       r"gradient_conflict\.png|tensorboard/events\.out\.tfevents\.[\w.-]+|"
                       r"inspect/[\w.-]+\.(md|json|png))$")  # inspect/: the default of `mtrec inspect`


class RunDirectory:
    """Writes the files of the run directory ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def resume_path(self) -> Path:
        return self.path / RESUME

    def check(self) -> None:
        """PathError unless the directory can be written and holds nothing but a run's files (a directory
        of other files is never written over)."""
        check_output_dir(self.path, "run directory")
        check_own_dir(self.path, RUN_FILES, "an mtrec run directory")

    def check_replaceable(self, resume: bool, overwrite: bool) -> None:
        """PathError if a run would replace the finished run here (it has ``metrics.json``) although it
        neither continues it (``resume``) nor was asked to replace it (``overwrite``)."""
        if not resume and not overwrite and (self.path / METRICS).is_file():
            raise PathError(f"{self.path} holds a finished run ({METRICS}): pass --resume to continue it, "
                            f"--overwrite to replace it, or choose another --out")

    def start(self, dataset: PreparedDataset, config: RunConfig) -> None:
        """Create the directory and write the run's description: schema, resolved config, the data's
        encoders (if it has them). A run in progress has no ``metrics.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / METRICS).unlink(missing_ok=True)
        dataset.schema.save(self.path / SCHEMA)
        config.save(self.path / CONFIG)
        dataset.write_encoders(self.path / ENCODERS_FILE)

    # ---- training progress ---------------------------------------------------------------------
    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``history.jsonl`` with ``rows`` (a fresh run: none; a resumed one: the checkpoint's)."""
        atomic_write_text(self.path / HISTORY, "".join(json_text(row) + "\n" for row in rows))

    def append_history(self, row: dict[str, Any]) -> None:
        with open(self.path / HISTORY, "a") as fh:
            fh.write(json_text(row) + "\n")

    def write_timing(self, timing: dict[str, Any]) -> None:
        """``timing.json``: how long the run took (the benchmark's record, ``{wall_s, resumed}``)."""
        atomic_write_text(self.path / TIMING, json_text(timing) + "\n")

    def timing(self) -> dict[str, Any]:
        """``timing.json`` as written by :meth:`write_timing`; ``{}`` where there is none (or it is unreadable)."""
        try:
            timing = json.loads((self.path / TIMING).read_text())
        except (OSError, ValueError):
            return {}
        return timing if isinstance(timing, dict) else {}

    def write_weights(self, state: dict[str, Any]) -> None:
        save_weights(self.path / WEIGHTS, state)

    def remove_weights(self) -> None:
        (self.path / WEIGHTS).unlink(missing_ok=True)

    def write_resume(self, state: dict[str, Any]) -> None:
        save_resume(self.resume_path, state)

    def read_resume(self) -> dict[str, Any] | None:
        """The resume checkpoint, or None if there is none."""
        return load_resume(self.resume_path) if self.resume_path.exists() else None

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries of writes that a killed process did not finish (and nothing else)."""
        remove_stale_temporaries(self.path)

    def remove_resume(self) -> None:
        """A fresh run must not resume an older one (nor any rank's file of it)."""
        self.resume_path.unlink(missing_ok=True)
        self.remove_resume_shards()

    # ---- a sharded run's per-rank checkpoint files (mtrec.training.sharding) -------------------------
    def shard_path(self, rank: int, world_size: int, step: int) -> Path:
        """Rank ``rank``'s checkpoint file of optimizer step ``step`` (each rank writes its own)."""
        return self.path / f"resume-shard{rank}of{world_size}-step{step}.safetensors"

    def write_resume_shard(self, rank: int, world_size: int, step: int, state: dict[str, Any]) -> None:
        save_resume(self.shard_path(rank, world_size, step), state)

    def read_resume_shard(self, rank: int, world_size: int, step: int) -> dict[str, Any]:
        return load_resume(self.shard_path(rank, world_size, step))

    def remove_resume_shards(self, rank: int | None = None, keep: Path | None = None) -> None:
        """Delete per-rank checkpoint files: every rank's, or only ``rank``'s; all but ``keep``."""
        for path in self.path.glob(f"resume-shard{'*' if rank is None else rank}of*-step*.safetensors"):
            if path != keep and RUN_FILES.match(path.name):
                path.unlink(missing_ok=True)

    # ---- live curves (mtrec.training.tensorboard) -----------------------------------------------
    @property
    def tensorboard_path(self) -> Path:
        return self.path / TENSORBOARD

    def remove_tensorboard(self) -> None:
        """A fresh run starts its curves anew: delete the event files an earlier run wrote here."""
        for path in self.tensorboard_path.glob("events.out.tfevents.*"):
            if RUN_FILES.match(f"{TENSORBOARD}/{path.name}"):
                path.unlink(missing_ok=True)

    # ---- results -------------------------------------------------------------------------------
    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.path / METRICS, json_text(metrics, indent=2) + "\n")

    def write_plots(self, history: list[dict[str, Any]], schema: DatasetSchema, probs: dict[str, np.ndarray],
                    labels: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
        """Learning curves for every task; test ROC curves for the binary tasks."""
        from mtrec.training.plots import plot_learning_curves, plot_roc  # matplotlib: rank 0 only

        plot_learning_curves(history, schema.task_names, self.path / "learning_curves.png")
        binary = [t.name for t in schema.tasks if t.is_binary]
        if binary:
            plot_roc({t: probs[t] for t in binary}, labels, masks, self.path / "roc.png")

    def write_gradient_conflict(self, steps: np.ndarray, cosines: dict[str, np.ndarray]) -> None:
        """``gradient_conflict.png``: each task pair's gradient cosine ``[S]`` by step ``[S]``."""
        from mtrec.training.plots import plot_gradient_conflict

        plot_gradient_conflict(steps, cosines, self.path / "gradient_conflict.png")


def started_with(path: Path, config: RunConfig) -> bool:
    """Whether the run directory ``path`` was started with ``config``: its ``config.json``, read through
    :class:`RunConfig` (a setting added to mtrec since takes its default), has the settings that decide a
    run (:func:`~mtrec.training.checkpointer.run_settings`) of ``config``."""
    try:
        return (Path(path) / CONFIG).is_file() and \
            run_settings(RunConfig.load(Path(path) / CONFIG)) == run_settings(config)
    except (ConfigError, ModelConfigError):
        return False


def finished_metrics(path: Path, config: RunConfig) -> dict[str, Any] | None:
    """The metrics of a run that finished in ``path`` with this same config, else None (the one "is this
    run done?" check of the benchmark and the studies)."""
    if not ((Path(path) / METRICS).is_file() and started_with(path, config)):
        return None
    metrics: dict[str, Any] = json.loads((Path(path) / METRICS).read_text())
    return metrics
