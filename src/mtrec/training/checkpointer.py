"""Resume checkpoints of a training run, and the one list of settings that decide a run.

:class:`Checkpointer` writes the state a run continues from (``resume.safetensors``, through the run
directory's writer and the placement, which gives each rank of a sharded run its own file) and restores
it; the checks a checkpoint must pass happen before anything is loaded or written.

:data:`RUN_SETTINGS` and :data:`TRAIN_SETTINGS` are the settings that decide a run's result: a resumed run
must keep them (except :data:`MAY_GROW`: a resumed run may train longer or stop sooner), the run
directory's "was this run started with that config" compares them, and a study's cache keys its runs by
them. Threads, prefetch, device and checkpoint cadence do not decide a result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtrec import collectives
from mtrec.training.build import resolve_config
from mtrec.training.checkpoint import CONFIG, weights_problem
from mtrec.training.config import ConfigError, RunConfig, TrainConfig
from mtrec.training.resume import ResumeError, rng_state, set_rng_state
from mtrec.training.state import TrainState

if TYPE_CHECKING:
    from mtrec.training.rundir import RunDirectory
    from mtrec.training.trainer import Trainer

RUN_SETTINGS = ("model", "data", "model_options")
# a resumed run keeps these (its checkpoint says which it was started with)
RESUME_FIXED = ("batch_size", "seed", "lr", "weight_decay", "weighting", "weighting_options", "objective",
                "objective_options", "select", "embedding_sharding", "embedding_optimizer", "embedding_lr",
                "precision", "train_fraction")
MAY_GROW = ("epochs", "patience")
TRAIN_SETTINGS = RESUME_FIXED + MAY_GROW


def run_settings(config: RunConfig) -> dict[str, Any]:
    """The settings of ``config`` that decide its result, resolved (model options filled in, the objective
    named) and as JSON values."""
    resolved = json.loads(json.dumps(resolve_config(config).to_dict()))
    return {**{k: resolved[k] for k in RUN_SETTINGS}, "train": {k: resolved["train"][k] for k in TRAIN_SETTINGS}}


def check_resumable(config: RunConfig, out: Path) -> None:
    """Refuse to resume a run directory whose saved config names another model, data or model options
    (the train settings are checked against the checkpoint)."""
    path = out / CONFIG
    if not path.exists():
        return
    saved, current = run_settings(RunConfig.load(path)), run_settings(config)
    changed = [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in RUN_SETTINGS if saved[key] != current[key]]
    if changed:
        raise ConfigError(f"cannot resume {out}: the run was started with other settings ({'; '.join(changed)})")


def nonfinite_tensors(state: Any, path: str = "") -> list[str]:
    """Paths of the floating-point tensors in a nested state (dicts, lists, tuples) holding NaN or inf."""
    if isinstance(state, torch.Tensor):
        return [path or "/"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list | tuple) else []
    return [bad for key, value in items for bad in nonfinite_tensors(value, f"{path}/{key}")]


class Checkpointer:
    """Saves and restores a trainer's resume state in the run directory ``run_dir`` (None: none)."""

    def __init__(self, run_dir: RunDirectory | None, config: TrainConfig) -> None:
        self.run_dir = run_dir
        self.config = config
        self.saved_at = time.monotonic()  # when the last checkpoint was written (or training began)

    def due(self, trainer: Trainer, state: TrainState) -> bool:
        """Whether a checkpoint is due after this step: every ``train.checkpoint_every`` steps, or
        ``train.checkpoint_minutes`` after the last one. Ranks decide the time together (a collective,
        every ``nonfinite_check_every`` steps), so that all of them write the same checkpoint."""
        cfg = self.config
        if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
            return True
        distributed = trainer.dist.enabled
        if not cfg.checkpoint_minutes or (distributed and state.global_step % cfg.nonfinite_check_every):
            return False
        due = time.monotonic() - self.saved_at >= 60 * cfg.checkpoint_minutes
        if distributed:
            return bool(collectives.all_reduce_(torch.tensor([int(due)], device=trainer.device), "max").item())
        return due

    def last_checkpoint(self) -> Path | None:
        """The resume checkpoint a run could continue from now, if there is one."""
        return self.run_dir.resume_path if self.run_dir is not None and self.run_dir.resume_path.exists() else None

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in RESUME_FIXED}

    def save(self, trainer: Trainer, state: TrainState) -> None:
        """Write the resume checkpoint of ``trainer`` at ``state`` (the caller has checked that nothing
        non-finite goes in it). A collective."""
        self.saved_at = time.monotonic()
        if self.run_dir is None:  # the same on every rank
            return
        common = {
            "settings": self._settings(),
            "steps_per_epoch": trainer.steps_per_epoch,
            "precision": trainer.precision.name,  # what train.precision chose (auto depends on the device)
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else {},  # fp16's loss scale
            "progress": state.to_dict(),
            "weighting": trainer.weighting.state_dict(),
            "objective": trainer.objective.state_dict(),
            "rng": rng_state(trainer.device),  # a collective
        }
        held = {"model": trainer.placement.held(), "best": trainer.selection.best_states,
                "optimizer": trainer.optimizer.state_dict(), **trainer.placement.extra_state()}
        trainer.placement.save_checkpoint(self.run_dir, common, held, state.global_step)

    def restore(self, trainer: Trainer, state: TrainState) -> TrainState:
        """The state to continue from: the run directory's checkpoint (every rank reads the same file),
        loaded into ``trainer``, or ``state`` when there is none."""
        if self.run_dir is None:
            raise ResumeError("resuming needs the run directory that holds the checkpoint")
        saved = self.run_dir.read_resume()
        if saved is None:
            trainer.log(f"--resume: no checkpoint at {self.run_dir.resume_path}, starting from the beginning")
            return state
        return self._load(trainer, saved, str(self.run_dir.resume_path))

    def _check_settings(self, trainer: Trainer, saved: dict[str, Any], where: str) -> None:
        """Refuse a checkpoint of other settings or other training data."""
        defaults = TrainConfig()  # a checkpoint written before a setting existed had its default
        found = saved.get("settings")
        if not isinstance(found, dict):
            raise ResumeError(f"{where}: the checkpoint names no settings")
        settings = {k: found.get(k, getattr(defaults, k)) for k in RESUME_FIXED}
        changed = [f"train.{k}: {settings[k]!r} -> {v!r}" for k, v in self._settings().items() if settings[k] != v]
        if changed:
            raise ResumeError(f"{where}: cannot resume with changed settings ({'; '.join(changed)}); "
                              f"use the checkpoint's settings or start a new run directory")
        computed = saved.get("precision", "fp32")  # checkpoints from before precision existed: fp32
        if computed != trainer.precision.name:
            raise ResumeError(f"{where}: the checkpoint was trained in {computed}, this run would compute in "
                              f"{trainer.precision.name} ({trainer.precision.reason}); resume with "
                              f"train.precision: {computed}")
        if saved.get("steps_per_epoch") != trainer.steps_per_epoch:
            raise ResumeError(f"{where}: the checkpoint has {saved.get('steps_per_epoch')} steps per epoch, this "
                              f"run {trainer.steps_per_epoch}: not the same training data")

    @staticmethod
    def _check_state(trainer: Trainer, saved: dict[str, Any], held: dict[str, Any], where: str) -> TrainState:
        """The checkpoint's progress, after checking its weights' names, shapes and dtypes against the
        model, and that no tensor in it is NaN or infinite (before anything is loaded or written)."""
        progress = TrainState.from_dict(saved.get("progress"), where)
        expected = trainer.placement.held()
        best = held.get("best")
        if not isinstance(held.get("model"), dict) or not isinstance(best, dict):
            raise ResumeError(f"{where}: the checkpoint holds no model weights")
        for name, weights in [("model", held["model"]), *[(f"best/{k}", v) for k, v in best.items()]]:
            problem = weights_problem(weights, expected) if isinstance(weights, dict) else "not a state dict"
            if problem is not None:
                raise ResumeError(f"{where}: {name} does not fit this model: {problem}")
        bad = nonfinite_tensors({**saved, **held})
        if bad:
            raise ResumeError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                              f"nothing was written from it: start a new run, or resume from a good checkpoint")
        return progress

    def _load(self, trainer: Trainer, saved: dict[str, Any], where: str) -> TrainState:
        """Continue from a resume checkpoint ``saved`` (read from ``where``)."""
        assert self.run_dir is not None
        self._check_settings(trainer, saved, where)
        held = trainer.placement.load_checkpoint(saved, self.run_dir)
        state = self._check_state(trainer, saved, held, where)
        try:
            trainer.placement.restore(held["model"])
            trainer.weighting.load_state_dict(saved["weighting"])
            trainer.objective.load_state_dict(saved["objective"])
            trainer.optimizer.load_state_dict(held["optimizer"])
            if trainer.scaler is not None and saved.get("scaler"):
                trainer.scaler.load_state_dict(saved["scaler"])
            trainer.placement.load_extra_state(held)
            set_rng_state(saved["rng"], trainer.device, trainer.dist.rank, trainer.dist.world_size)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"{where}: does not fit this model and optimizer ({exc})") from exc
        trainer.selection.best_states = {key: {k: v.to(trainer.device) for k, v in weights.items()}
                                         for key, weights in held["best"].items()}
        trainer.log(f"resumed from {where}: epoch {state.epoch} step {state.step}, "
                    f"{state.samples:,} samples trained so far")
        return state
